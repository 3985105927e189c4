"""`shift`: shift consistency (Zhang 2019) — do two shifted copies of an image get the same label?

Per batch and pass, two offsets (dy, dx) are drawn uniformly from 0..max_shift (one pair of offsets
for the whole batch, as in the APS and antialiased-CNN evaluation code); each image is shifted by
both and the two top-1 predictions are compared (no labels needed). Modes:

- `circular`: torch.roll — content leaving one edge re-enters at the other (the APS protocol; a
  polyphase-anchored ViT is exactly invariant to it).
- `crop`: the image is padded by max_shift on every side (`pad: zeros | reflect`) and the crop of
  the original size at the same offset is taken, so content enters and leaves the frame. [choice]
  Crop offsets follow the circular ones exactly (content moves down/right by dy, dx), so the two
  modes differ only in what fills the vacated border.

Metrics, over images x passes: shift_consistency (agreement rate) and shifted_accuracy (top-1 on
the first shifted copy), both proportions with Wilson intervals. The intervals treat the passes of
one image as independent draws, so they are somewhat narrow when passes > 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ..core.cells import stable_hash
from ..core.metrics import Measurement, proportion, register_metric
from ..core.registry import SCENARIOS
from .base import CellContext, Scenario

Offset = tuple[int, int]


register_metric("shift_consistency", higher_is_better=True, headline=True,
                description="How often predictions of two shifted copies agree")
register_metric("shifted_accuracy", higher_is_better=True,
                description="Top-1 accuracy on shifted inputs")


def circular_shift(x: torch.Tensor, offset: Offset, max_shift: int, pad: str) -> torch.Tensor:
    """Roll images (B,C,H,W) by offset (dy, dx) pixels down and right, wrapping around."""
    return torch.roll(x, shifts=offset, dims=(2, 3))


def crop_shift(x: torch.Tensor, offset: Offset, max_shift: int, pad: str) -> torch.Tensor:
    """Move the content by (dy, dx) down and right inside a padded frame: it leaves the frame."""
    if max_shift == 0:
        return x
    mode = "constant" if pad == "zeros" else "reflect"
    padded = F.pad(x, (max_shift,) * 4, mode=mode)
    top, left = max_shift - offset[0], max_shift - offset[1]
    return padded[:, :, top:top + x.shape[2], left:left + x.shape[3]]


SHIFTS: dict[str, Callable[[torch.Tensor, Offset, int, str], torch.Tensor]] = {
    "circular": circular_shift,
    "crop": crop_shift,
}
"""Shift mode -> function(images, (dy, dx), max_shift, pad) returning images of the same size."""


def scenario_seed(seed: int, *tags: object) -> int:
    """A 63-bit seed derived from the cell seed and tags (independent streams per purpose)."""
    return int(stable_hash([seed, *tags]), 16) & ((1 << 63) - 1)


def draw_offset(gen: torch.Generator, max_shift: int) -> Offset:
    """One (dy, dx) drawn uniformly from 0..max_shift."""
    dy, dx = torch.randint(0, max_shift + 1, (2,), generator=gen).tolist()
    return int(dy), int(dx)


@SCENARIOS.register("shift")
@dataclass(frozen=True, kw_only=True)
class ShiftScenario(Scenario):
    """Shift consistency: agreement of top-1 labels of two shifted copies (circular or crop)."""

    kind: ClassVar[str] = "shift"
    mode: Literal["circular", "crop"] = "circular"
    max_shift: Annotated[int, Field(ge=0)] = 4
    passes: Annotated[int, Field(ge=1)] = 5
    pad: Literal["zeros", "reflect"] = "zeros"

    def shift(self, x: torch.Tensor, offset: Offset) -> torch.Tensor:
        """`x` shifted by `offset` in this scenario's mode."""
        return SHIFTS[self.mode](x, offset, self.max_shift, self.pad)

    def check_size(self, x: torch.Tensor) -> None:
        """Reflect padding needs max_shift smaller than the image side."""
        if self.mode == "crop" and self.pad == "reflect" and self.max_shift >= min(x.shape[2:]):
            raise ValueError(f"pad: reflect needs max_shift < image side {min(x.shape[2:])}, "
                             f"got {self.max_shift}")

    @torch.no_grad()
    def run(self, ctx: CellContext) -> list[Measurement]:
        gen = torch.Generator().manual_seed(scenario_seed(ctx.seed, "shift"))
        agree = correct = total = 0
        for x, y in ctx.batches():
            self.check_size(x)
            for _ in range(self.passes):
                first, second = draw_offset(gen, self.max_shift), draw_offset(gen, self.max_shift)
                with ctx.autocast():
                    p0 = ctx.model(self.shift(x, first)).argmax(1)
                    p1 = ctx.model(self.shift(x, second)).argmax(1)
                agree += int((p0 == p1).sum())
                correct += int((p0 == y).sum())
                total += len(y)
        return [proportion("shift_consistency", agree, total),
                proportion("shifted_accuracy", correct, total)]
