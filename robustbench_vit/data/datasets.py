"""Datasets: digits (embedded), imagefolder, cifar10, imagenet_c and synthetic; images in [0,1]."""

from __future__ import annotations

import functools
import logging
from collections.abc import Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

import torch
from pydantic import Field
from torch.utils.data import Dataset, Subset, TensorDataset

from ..core.errors import DataError, UnknownNameError
from ..core.params import ParamError
from ..core.registry import CORRUPTIONS, DATASETS
from .image_folders import IMAGE_SUFFIXES, FolderImages, class_folders, list_class_images

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class DatasetSource:
    """Base of datasets: `load` returns a torch Dataset of ([0,1] image, label) pairs."""

    def num_classes(self) -> int:
        """Number of classes."""
        raise NotImplementedError

    def load(self, data_config: dict[str, Any] | None = None) -> Dataset:
        """The images, preprocessed for a model with timm data config `data_config`."""
        raise NotImplementedError


@DATASETS.register("digits")
@dataclass(frozen=True, kw_only=True)
class Digits(DatasetSource):
    """scikit-learn's 1,797 bundled 8x8 handwritten digits, upsampled, 3 channels (offline).

    `task: parity` relabels digits as even (0) / odd (1) — a downstream task for fine-tuning.
    """

    split: Literal["train", "test", "all"] = "test"
    image_size: Annotated[int, Field(ge=8, le=512)] = 32
    test_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.25
    split_seed: int = 0
    task: Literal["digits", "parity"] = "digits"

    def num_classes(self) -> int:
        return 10 if self.task == "digits" else 2

    def load(self, data_config: dict[str, Any] | None = None) -> Dataset:
        x, digit = digits_tensors(self.image_size)
        y = digit % 2 if self.task == "parity" else digit
        if self.split == "all":
            return TensorDataset(x.clone(), y.clone())
        # split on the digit, so every task shares one train/test split
        idx = stratified_split(digit, self.test_fraction, self.split_seed)[self.split == "test"]
        return TensorDataset(x[idx], y[idx])


@functools.lru_cache(maxsize=4)
def digits_tensors(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All digits as (N,3,S,S) floats in [0,1] and (N,) int64 labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear",
                                        align_corners=False).clamp(0, 1)
    return x.expand(-1, 3, -1, -1).contiguous(), torch.tensor(bunch.target, dtype=torch.long)


def stratified_split(y: torch.Tensor, test_fraction: float,
                     seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, test indices): the same fraction of each class in test, fixed by `seed`."""
    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    for label in torch.unique(y):
        members = torch.nonzero(y == label).flatten()
        members = members[torch.randperm(len(members), generator=gen)]
        n_test = round(len(members) * test_fraction)
        test.append(members[:n_test])
        train.append(members[n_test:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


@DATASETS.register("synthetic")
@dataclass(frozen=True, kw_only=True)
class Synthetic(DatasetSource):
    """Seeded random images with class-dependent brightness (tests; no files needed)."""

    size: Annotated[int, Field(gt=0)] = 64
    classes: Annotated[int, Field(ge=2)] = 10
    image_size: Annotated[int, Field(ge=4)] = 32
    seed: int = 0

    def num_classes(self) -> int:
        return self.classes

    def load(self, data_config: dict[str, Any] | None = None) -> Dataset:
        gen = torch.Generator().manual_seed(self.seed)
        y = torch.randint(0, self.classes, (self.size,), generator=gen)
        noise = torch.rand(self.size, 3, self.image_size, self.image_size, generator=gen)
        level = (y.float() + 0.5) / self.classes
        x = (0.5 * noise + 0.5 * level.view(-1, 1, 1, 1)).clamp(0, 1)
        return TensorDataset(x, y)


def eval_transform(data_config: dict[str, Any] | None, native_size: int | None = None) -> Any:
    """Resize / center crop from the model's timm data config, without normalization."""
    from torchvision import transforms

    if not data_config:
        return transforms.ToTensor()
    size = data_config.get("input_size", (3, 224, 224))[-1]
    if native_size == size:
        return transforms.ToTensor()
    import timm.data

    cfg = {k: data_config[k] for k in ("input_size", "interpolation", "crop_pct", "crop_mode")
           if k in data_config}
    return timm.data.create_transform(**cfg, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                                      is_training=False)


@DATASETS.register("imagefolder")
@dataclass(frozen=True, kw_only=True)
class ImageFolderData(DatasetSource):
    """A folder of class sub-folders (ImageNet-val layout), preprocessed per the model.

    Listed as robustbench_vit.data.image_folders says: links never loop or count an image twice,
    16-bit images are scaled, an unreadable image is an error naming it.
    """

    root: str
    split: str | None = None
    classes: Annotated[int, Field(ge=2)] | None = None

    def folder(self) -> Path:
        path = Path(self.root).expanduser()
        return path / self.split if self.split else path

    def num_classes(self) -> int:
        if self.classes:
            return self.classes
        try:
            return len(class_folders(self.folder()))
        except DataError as exc:
            raise DataError(f"imagefolder: {exc}") from None

    def load(self, data_config: dict[str, Any] | None = None) -> Dataset:
        folder = self.folder()
        try:
            classes = [name for name, _ in class_folders(folder)]
            found = list_class_images(folder)
            empty = sorted(set(classes) - {key.split("/", 1)[0] for key in found})
            if empty:
                raise DataError(f"{folder}: no images in class folder(s) {', '.join(empty)} "
                                f"(extensions: {' '.join(sorted(IMAGE_SUFFIXES))})")
            return FolderImages(folder, list(found), classes, eval_transform(data_config), found)
        except DataError as exc:
            raise DataError(f"imagefolder: {exc}") from None


@DATASETS.register("cifar10")
@dataclass(frozen=True, kw_only=True)
class Cifar10(DatasetSource):
    """CIFAR-10 from a local root in torchvision's layout; downloads only with `download: true`."""

    root: str
    split: Literal["train", "test"] = "test"
    download: bool = False

    def num_classes(self) -> int:
        return 10

    def load(self, data_config: dict[str, Any] | None = None) -> Dataset:
        from torchvision.datasets import CIFAR10

        try:
            return CIFAR10(str(Path(self.root).expanduser()), train=self.split == "train",
                           download=self.download, transform=eval_transform(data_config, 32))
        except RuntimeError as exc:
            raise DataError(f"cifar10 at {self.root}: {exc} "
                            "(set download: true to fetch it)") from None


@runtime_checkable
class ProvidesCorruptions(Protocol):
    """A loaded dataset whose corrupted copies are files (ImageNet-C): scenarios read, not generate.

    `corrupted(name, severity)` and `clean()` are aligned with it index by index; `clean()` is None
    when the clean images are not available. `published_baseline` names the published error table
    that mCE is relative to by default (see robustbench_vit.scenarios.corruption.mce).
    """

    published_baseline: str | None

    def corrupted(self, name: str, severity: int) -> Dataset: ...

    def clean(self) -> Dataset | None: ...


def precomputed_transform(data_config: dict[str, Any] | None, native_size: int) -> Any:
    """ToTensor for files already at the model's input size, else one resize to it (no crop)."""
    from torchvision import transforms

    size = tuple((data_config or {}).get("input_size", (3, native_size, native_size))[-2:])
    if size == (native_size, native_size):
        return transforms.ToTensor()
    name = str((data_config or {}).get("interpolation", "bilinear"))
    modes = {m.value: m for m in transforms.InterpolationMode}
    mode = modes.get(name, transforms.InterpolationMode.BILINEAR)
    return transforms.Compose([transforms.Resize(size, interpolation=mode, antialias=True),
                               transforms.ToTensor()])


class CorruptionFolders(FolderImages):
    """One ImageNet-C folder (corruption, severity); `corrupted` gives the others, aligned."""

    published_baseline: str | None = "published:alexnet"

    def __init__(self, source: ImageNetC, data_config: dict[str, Any] | None):
        folder = source.folder(source.corruption, source.severity)
        classes, found = [name for name, _ in class_folders(folder)], list_class_images(folder)
        super().__init__(folder, list(found), classes,
                         precomputed_transform(data_config, source.image_size), found)
        self.source, self.data_config = source, data_config

    def corrupted(self, name: str, severity: int) -> FolderImages:
        """The same images under corruption `name` at `severity` (read from its folder)."""
        return FolderImages(self.source.folder(name, severity), self.keys, self.classes,
                            self.transform)

    def clean(self) -> FolderImages | None:
        """The same images from `clean_root` (ImageNet val layout, the model's eval transform)."""
        if not self.source.clean_root:
            return None
        return FolderImages(Path(self.source.clean_root).expanduser(), self.keys, self.classes,
                            eval_transform(self.data_config))


@DATASETS.register("imagenet_c")
@dataclass(frozen=True, kw_only=True)
class ImageNetC(DatasetSource):
    """The published ImageNet-C files: root/<corruption>/<severity>/<wnid>/<image>, not regenerated.

    `load` returns the (corruption, severity) folder; the corruption scenario reads the folder of
    every corruption it lists. Files are used as they are (224 center crops: ToTensor only) unless
    the model's input size differs (one resize, no second crop). `clean_root` (ImageNet val in
    class folders, same file names) gives the clean accuracy that relative mCE needs.
    """

    root: str
    corruption: str = "gaussian_noise"
    severity: Annotated[int, Field(ge=1, le=5)] = 1
    clean_root: str | None = None
    image_size: Annotated[int, Field(ge=8)] = 224
    classes: Annotated[int, Field(ge=2)] | None = None

    def check(self) -> None:
        from . import corruptions  # noqa: F401 - registers the corruption names

        try:
            CORRUPTIONS.get(self.corruption)
        except UnknownNameError as exc:
            raise ParamError("corruption", str(exc)) from None

    def folder(self, corruption: str, severity: int) -> Path:
        """root/<corruption>/<severity>."""
        return Path(self.root).expanduser() / corruption / str(severity)

    def num_classes(self) -> int:
        if self.classes:
            return self.classes
        folder = self.folder(self.corruption, self.severity)
        return len(class_folders(folder)) if folder.is_dir() else 0

    def load(self, data_config: dict[str, Any] | None = None) -> Dataset:
        try:
            return CorruptionFolders(self, data_config)
        except DataError as exc:
            raise DataError(f"imagenet_c: {exc}") from None


def subset_indices(total: int, n_examples: int | None, seed: int) -> list[int]:
    """Sorted indices of a deterministic subset of `n_examples` of `total` items, chosen by
    `seed`."""
    if n_examples is None or n_examples >= total:
        return list(range(total))
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=gen)[:n_examples].sort().values.tolist()


def heldout_indices(total: int, n_examples: int | None, seed: int, n: int) -> list[int]:
    """Up to `n` indices outside `subset_indices(...)` (the evaluated slice), deterministic."""
    chosen = set(subset_indices(total, n_examples, seed))
    rest = [i for i in range(total) if i not in chosen]
    gen = torch.Generator().manual_seed(seed + 1)
    order = torch.randperm(len(rest), generator=gen).tolist()
    return sorted(rest[i] for i in order[:n])


def dataset_len(dataset: object) -> int:
    """len(dataset): torch's Dataset declares no __len__, though every map-style dataset has one."""
    if not isinstance(dataset, Sized):
        raise TypeError(f"object of type {type(dataset).__name__!r} has no len()")
    return len(dataset)


def subset(dataset: Dataset, n_examples: int | None, seed: int) -> Dataset:
    """A deterministic subset of `n_examples` items (in index order), chosen by `seed`."""
    total = dataset_len(dataset)
    if n_examples is None or n_examples >= total:
        return dataset
    return Subset(dataset, subset_indices(total, n_examples, seed))
