"""`shapes`: seeded, procedurally drawn geometric shapes on textured backgrounds (no files).

A downstream task unrelated to the digit labels, for the Downstream Transfer Attack: a model
pre-trained on digits is fine-tuned on shapes. Every image is drawn from its own generator seeded
by (seed, split, index), so a split is deterministic, does not depend on `size` (a smaller split is
a prefix of a larger one), and the train, test and attacker splits are disjoint draws. Labels cycle
through the classes (index mod classes): every split is balanced.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from torch.utils.data import Dataset, TensorDataset

from ..core.registry import DATASETS
from .datasets import DatasetSource

SHAPES = ("disc", "square", "triangle", "cross", "ring", "bar")
"""Class names, in label order (`classes: k` keeps the first k)."""
SPLITS = ("train", "test", "attacker")
DEFAULT_SIZES = {"train": 4000, "test": 600, "attacker": 2000}
SUPERSAMPLE = 2
"""Sub-pixels per pixel side when drawing a shape (its edges are anti-aliased)."""
MIN_CONTRAST = 0.25
"""Least luminance difference between a shape and its background's mean colour."""


@DATASETS.register("shapes")
@dataclass(frozen=True, kw_only=True)
class Shapes(DatasetSource):
    """Seeded geometric shapes (disc, square, triangle, cross, ring, bar) on textured backgrounds.

    Random position, size, rotation, colours and background (a smooth colour field, a grating and
    pixel noise); `split: train | test | attacker` are disjoint draws, `size` images each (default
    4000 / 600 / 2000), balanced over `classes`.
    """

    split: Literal["train", "test", "attacker"] = "test"
    size: Annotated[int, Field(ge=1)] | None = None
    image_size: Annotated[int, Field(ge=8, le=256)] = 32
    classes: Annotated[int, Field(ge=2, le=len(SHAPES))] = len(SHAPES)
    seed: int = 0

    def num_classes(self) -> int:
        return self.classes

    def split_size(self) -> int:
        """`size`, or the split's default."""
        return self.size if self.size is not None else DEFAULT_SIZES[self.split]

    def load(self, data_config: dict[str, Any] | None = None) -> Dataset:
        x, y = shapes_tensors(self.split, self.split_size(), self.image_size, self.classes,
                              self.seed)
        return TensorDataset(x.clone(), y.clone())


@functools.lru_cache(maxsize=8)
def shapes_tensors(split: str, size: int, image_size: int, classes: int,
                   seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(size,3,S,S) float images in [0,1] and (size,) int64 labels of one split (cached)."""
    split_id = SPLITS.index(split)
    labels = torch.arange(size, dtype=torch.long) % classes
    draws = [draw(np.random.default_rng([seed, split_id, i]), image_size) for i in range(size)]
    images = [render(draws[i:i + CHUNK], labels[i:i + CHUNK].tolist(), image_size)
              for i in range(0, size, CHUNK)]
    return torch.cat(images), labels


CHUNK = 256
"""Images rendered together (a memory bound, not a result knob)."""


@dataclass(frozen=True)
class Draw:
    """Every random choice of one image."""

    centre: np.ndarray  # (2,) x, y in pixels
    radius: float
    angle: float
    base: np.ndarray  # (3,) background colour
    coarse: np.ndarray  # (3,4,4) smooth colour field around it
    grating: np.ndarray  # (4,) frequency, orientation, phase, amplitude
    colour: np.ndarray  # (3,) shape colour
    noise: np.ndarray  # (3,S,S) pixel noise


CENTRE = (0.4, 0.6)
"""Range of the shape's centre, per axis, as a fraction of the image side."""
RADIUS = (0.28, 0.4)
"""Range of the shape's outer radius, as a fraction of the image side (the shape stays inside:
smaller shapes left a 4-block ViT with patch 8 at ~0.3-0.6 test accuracy after fine-tuning)."""
FIELD_STD = 0.08
"""Standard deviation of the background's smooth colour field around its base colour."""
GRATING = 0.06
"""Largest amplitude of the background's sinusoidal grating."""
NOISE = 0.02
"""Standard deviation of the Gaussian pixel noise."""


def draw(rng: np.random.Generator, size: int) -> Draw:
    """One image's random choices: position, size, rotation, background and colours, noise."""
    centre = rng.uniform(*CENTRE, 2) * size
    radius, angle = rng.uniform(*RADIUS) * size, rng.uniform(0, 2 * np.pi)
    base = rng.uniform(0.1, 0.9, 3)
    coarse = base[:, None, None] + rng.normal(0, FIELD_STD, (3, 4, 4))
    grating = np.array([rng.uniform(1, 5), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi),
                        rng.uniform(0, GRATING)])
    colour = shape_colour(rng, base)
    return Draw(centre=centre, radius=radius, angle=angle, base=base, coarse=coarse,
                grating=grating, colour=colour, noise=rng.normal(0, NOISE, (3, size, size)))


def luminance(rgb: np.ndarray) -> float:
    """Rec. 601 luma of an RGB colour."""
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def shape_colour(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """A random colour whose luminance differs from `base`'s by at least MIN_CONTRAST."""
    colour = rng.uniform(0, 1, 3)
    gap = luminance(colour) - luminance(base)
    if abs(gap) < MIN_CONTRAST:  # move it away from the background, on the side with room
        lighter = luminance(base) + MIN_CONTRAST <= 1
        colour = np.clip(colour + (MIN_CONTRAST - gap if lighter else -MIN_CONTRAST - gap), 0, 1)
    return colour


def render(draws: list[Draw], labels: list[int], size: int) -> torch.Tensor:
    """(N,3,S,S) images in [0,1]: each background texture (a smooth colour field plus a
    sinusoidal grating), its shape pasted with anti-aliased edges, pixel noise."""
    stack = {f: torch.from_numpy(np.stack([getattr(d, f) for d in draws])).double()
             for f in ("centre", "coarse", "grating", "colour", "noise")}
    field = F.interpolate(stack["coarse"], size=(size, size), mode="bicubic", align_corners=True)
    freq, theta, phase, amp = (stack["grating"][:, k, None, None] for k in range(4))
    yy, xx = (torch.arange(size, dtype=torch.float64) / size).view(-1, 1), \
        (torch.arange(size, dtype=torch.float64) / size).view(1, -1)
    grating = amp * torch.sin(2 * torch.pi * freq * (xx * theta.cos() + yy * theta.sin()) + phase)
    background = field + grating[:, None]
    mask = shape_masks(draws, labels, size)[:, None]
    image = background * (1 - mask) + stack["colour"][:, :, None, None] * mask + stack["noise"]
    return image.clamp(0, 1).float()


def shape_masks(draws: list[Draw], labels: list[int], size: int) -> torch.Tensor:
    """(N,S,S) coverage in [0,1] of each image's shape (outer radius `radius` around `centre`,
    rotated by `angle`) from SUPERSAMPLE² sub-pixel samples per pixel."""
    n = size * SUPERSAMPLE
    coords = (torch.arange(n, dtype=torch.float32) + 0.5) / SUPERSAMPLE
    centre = torch.tensor(np.stack([d.centre for d in draws]), dtype=torch.float32)
    radius = torch.tensor([d.radius for d in draws], dtype=torch.float32).view(-1, 1, 1)
    angle = torch.tensor([d.angle for d in draws], dtype=torch.float32).view(-1, 1, 1)
    xx = coords.view(1, 1, n) - centre[:, 0].view(-1, 1, 1)
    yy = coords.view(1, n, 1) - centre[:, 1].view(-1, 1, 1)
    cos, sin = angle.cos() / radius, angle.sin() / radius
    u, v = xx * cos + yy * sin, yy * cos - xx * sin
    inside = torch.zeros(u.shape, dtype=torch.bool)
    label = torch.tensor(labels)
    for k, name in enumerate(SHAPES):
        rows = torch.nonzero(label == k).flatten()
        if len(rows):
            inside[rows] = INSIDE[name](u[rows], v[rows])
    return inside.view(-1, size, SUPERSAMPLE, size, SUPERSAMPLE).sum((2, 4)).double() \
        / SUPERSAMPLE**2


def _triangle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Equilateral triangle inscribed in the unit circle (inradius 1/2)."""
    inside = torch.ones(u.shape, dtype=torch.bool)
    for k in range(3):
        a = math.pi / 2 + 2 * math.pi * k / 3
        inside &= u * math.cos(a) + v * math.sin(a) <= 0.5
    return inside


def _bar(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u.abs() <= 1) & (v.abs() <= 0.3)


INSIDE = {
    "disc": lambda u, v: u * u + v * v <= 1,
    "square": lambda u, v: torch.maximum(u.abs(), v.abs()) <= 0.75,
    "triangle": _triangle,
    "cross": lambda u, v: _bar(u, v) | _bar(v, u),
    "ring": lambda u, v: (u * u + v * v <= 1) & (u * u + v * v >= 0.55**2),
    "bar": _bar,
}
"""Shape name -> membership of rotated, radius-scaled coordinates (u, v)."""
