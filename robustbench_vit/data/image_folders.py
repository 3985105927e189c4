"""Class-folder image trees (root/<class>/.../<image>): listed without loops, decoded to 8-bit RGB.

Listing rules, so that a tree of links can neither loop nor count an image twice:

- the classes are the root's sub-folders, sorted by name; a class folder may be a link to a
  folder elsewhere (a subset made of links), but not one that loops, leads to the root or a
  folder above it, or to (a folder inside, or around) another class's folder: each of those is a
  DataError naming the link;
- inside a class folder, images are found in every sub-folder (torchvision's ImageFolder order),
  but links to folders there are not followed (logged); links to image files are read;
- two files whose names differ only in the extension, in one folder, are a DataError (they
  would share the key "class/.../stem" that aligns ImageNet-C folders with their clean images).

Decoding: 16-bit greyscale images (Pillow modes I;16*, and I holding 16-bit values) are scaled to
8 bits (value / 257) instead of being clipped to white; 32-bit float images (mode F) are refused,
their range being unknown; every other mode goes through Pillow's RGB conversion (16-bit colour
PNGs are already reduced to 8 bits correctly by Pillow). A file that cannot be decoded
(truncated, not an image) is a DataError naming it, relative to the data root.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..core.errors import DataError

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff",
                            ".webp"})
"""torchvision's ImageFolder extensions (any case)."""
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error)
"""What Pillow raises on a broken file (a truncated JPEG is an OSError, a bad PNG chunk a
SyntaxError, ...)."""
_WARNED: set[str] = set()
"""Folders whose skipped links were logged (once per process)."""


def class_folders(root: Path) -> list[tuple[str, Path]]:
    """(class name, folder) for each sub-folder of `root`, sorted by name (see the module's
    rules for links); DataError when `root` is not a folder or a class folder link is unsafe."""
    if not root.is_dir():
        raise DataError(f"no such folder {root}")
    real_root = root.resolve()
    found: list[tuple[str, Path, Path]] = []
    with os.scandir(root) as entries:
        listed = sorted(entries, key=lambda e: e.name)
    for entry in listed:
        real = _class_target(root, entry, real_root)
        if real is not None:
            found.append((entry.name, root / entry.name, real))
    owner = {real: name for name, _, real in found}
    for name, _, real in found:
        other = owner[real] if owner[real] != name else None
        other = other or next((owner[p] for p in real.parents if p in owner), None)
        if other is not None:
            first, second = sorted((other, name))
            raise DataError(f"{root}: class folders {first!r} and {second!r} hold the same "
                            "images (one is a link to the other or to a folder inside it)")
    return [(name, path) for name, path, _ in found]


def _class_target(root: Path, entry: os.DirEntry[str], real_root: Path) -> Path | None:
    """The real folder behind a root entry; None when it is not a folder (or a broken link)."""
    if not entry.is_symlink():
        return real_root / entry.name if entry.is_dir() else None
    try:
        real = Path(os.path.realpath(root / entry.name, strict=True))
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DataError(f"{root}: class folder {entry.name!r} is a link that loops") from None
        raise
    if not real.is_dir():
        return None
    if real == real_root or real in real_root.parents:
        raise DataError(f"{root}: class folder {entry.name!r} is a link to the data root or a "
                        f"folder above it ({real})")
    return real


def list_class_images(folder: Path) -> dict[str, Path]:
    """"class/.../stem" -> file, for every image under the class folders of `folder`, in
    torchvision's ImageFolder order (class, then folder path, then file name)."""
    images: dict[str, Path] = {}
    skipped: list[str] = []
    for name, class_folder in class_folders(folder):
        for sub, files, links in _walk(class_folder):
            skipped += [f"{name}/{sub}{link}" for link in links]
            for file in files:
                key, path = f"{name}/{sub}{Path(file).stem}", class_folder / sub / file
                if key in images:
                    raise DataError(f"{folder}: {images[key].relative_to(folder)} and "
                                    f"{path.relative_to(folder)} share the name {key}: keep one")
                images[key] = path
    if skipped and str(folder) not in _WARNED:
        _WARNED.add(str(folder))
        log.warning("%s: not following %d link(s) to folders inside class folders (%s)", folder,
                    len(skipped), ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else ""))
    return images


def _walk(top: Path) -> list[tuple[str, list[str], list[str]]]:
    """("sub/", image file names, links to folders) per folder under `top`, not following
    links to folders, in torchvision's order (sorted by folder path, then file name)."""

    def unreadable(exc: OSError) -> None:
        raise DataError(f"cannot list {exc.filename}: {exc.strerror}")

    out = []
    for here, dirs, files in os.walk(top, onerror=unreadable, followlinks=False):
        rel = os.path.relpath(here, top)
        links = sorted(d for d in dirs if os.path.islink(os.path.join(here, d)))
        images = sorted(f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES)
        out.append(("" if rel == "." else rel, images, links))
    return [("" if rel == "" else rel.replace(os.sep, "/") + "/", images, links)
            for rel, images, links in sorted(out, key=lambda item: item[0])]


def _sixteen_bit(image: Image.Image) -> Image.Image:
    """16-bit greyscale -> 8-bit RGB, value / 257 rounded (65535 -> 255)."""
    from PIL import Image

    values = np.asarray(image).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise ValueError(f"mode {image.mode} pixels outside 0..65535 (not a 16-bit image)")
    grey = np.rint(values / 257.0).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def _float(image: Image.Image) -> Image.Image:
    """32-bit float pixels have no agreed range (0..1? 0..255?): refused, not guessed."""
    raise ValueError("32-bit float pixels (mode F): save the image with 8 or 16 bits")


TO_RGB: dict[str, Callable[[Image.Image], Image.Image]] = {
    **dict.fromkeys(("I;16", "I;16L", "I;16B", "I;16N", "I"), _sixteen_bit), "F": _float}
"""Pillow modes that `convert("RGB")` would clip (values above 255 become white)."""


def open_rgb(path: Path) -> Image.Image:
    """The image at `path` as 8-bit RGB (16-bit greyscale scaled, see TO_RGB); a file Pillow
    cannot decode raises one of DECODE_ERRORS."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        convert = TO_RGB.get(image.mode)
        return convert(image) if convert else image.convert("RGB")


class FolderImages(Dataset):
    """Images of a class-folder tree in a fixed order of "class/.../stem" keys, one transform."""

    def __init__(self, folder: Path, keys: list[str], classes: list[str], transform: Any,
                 found: dict[str, Path] | None = None):
        found = list_class_images(folder) if found is None else found
        missing = [k for k in keys if k not in found]
        if missing:
            raise DataError(f"{folder}: {len(missing)} of {len(keys)} images missing "
                            f"(first: {missing[0]})")
        index = {c: i for i, c in enumerate(classes)}
        self.samples = [(found[k], index[k.split("/", 1)[0]]) for k in keys]
        self.folder, self.keys, self.classes, self.transform = folder, keys, classes, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[i]
        try:
            image = open_rgb(path)
        except DECODE_ERRORS as exc:
            raise DataError(f"{self.folder}: {path.relative_to(self.folder)}: cannot read the "
                            f"image ({exc})") from None
        return self.transform(image), label
