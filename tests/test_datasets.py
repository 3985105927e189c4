"""Datasets: digits splits, subsets, synthetic, imagefolder and cifar10 layouts, all offline."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from torch.utils.data import Dataset

from robustbench_vit.core.errors import DataError
from robustbench_vit.data.datasets import (
    Cifar10,
    Digits,
    ImageFolderData,
    Synthetic,
    digits_tensors,
    stratified_split,
    subset,
)
from robustbench_vit.models.sources import NormalizedModel

N_DIGITS = 1797


def all_items(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))), strict=False)  # type: ignore[arg-type]
    return torch.stack(xs), torch.tensor([int(y) for y in ys])


# --- digits --------------------------------------------------------------------------------------

def test_digits_split_is_deterministic_disjoint_and_complete() -> None:
    _, y = digits_tensors(8)
    train, test = stratified_split(y, 0.25, seed=0)
    again = stratified_split(y, 0.25, seed=0)
    assert torch.equal(train, again[0]) and torch.equal(test, again[1])
    assert set(train.tolist()).isdisjoint(test.tolist())
    assert sorted(train.tolist() + test.tolist()) == list(range(N_DIGITS))
    assert torch.equal(train, train.sort().values) and torch.equal(test, test.sort().values)
    other = stratified_split(y, 0.25, seed=1)[1]
    assert not torch.equal(test, other) and len(other) == len(test)


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_digits_split_is_stratified(fraction: float) -> None:
    _, y = digits_tensors(8)
    _, test = stratified_split(y, fraction, seed=0)
    for label in range(10):
        members = int((y == label).sum())
        in_test = int((y[test] == label).sum())
        assert in_test == round(members * fraction), label


def test_digits_components_use_the_split() -> None:
    x_train, y_train = Digits(split="train", image_size=16).load().tensors
    x_test, y_test = Digits(split="test", image_size=16).load().tensors
    x_all, _ = Digits(split="all", image_size=16).load().tensors
    assert len(y_train) + len(y_test) == len(x_all) == N_DIGITS
    assert abs(len(y_test) - N_DIGITS * 0.25) <= 10
    assert set(y_test.tolist()) == set(range(10))
    # no test image also appears in train
    train_rows = {tuple(row.tolist()) for row in x_train[:, 0].flatten(1)}
    assert not any(tuple(row.tolist()) in train_rows for row in x_test[:, 0].flatten(1)[:50])
    again = Digits(split="test", image_size=16).load().tensors
    assert torch.equal(x_test, again[0]) and torch.equal(y_test, again[1])


@pytest.mark.parametrize("size", [32, 48])
def test_digits_images(size: int) -> None:
    x, y = Digits(split="test", image_size=size).load().tensors
    assert x.shape[1:] == (3, size, size) and x.dtype == torch.float32
    assert 0 <= float(x.min()) and float(x.max()) <= 1 and float(x.max()) > 0.5
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey as 3 channels
    assert y.dtype == torch.long and Digits().num_classes() == 10


# --- subset --------------------------------------------------------------------------------------

def test_subset_is_deterministic_sorted_and_seeded() -> None:
    ds = Synthetic(size=100).load()
    a, b, c = subset(ds, 20, seed=0), subset(ds, 20, seed=0), subset(ds, 20, seed=1)
    assert a.indices == b.indices  # type: ignore[attr-defined]
    assert a.indices != c.indices  # type: ignore[attr-defined]
    for s in (a, c):
        assert len(s) == 20 and s.indices == sorted(set(s.indices))  # type: ignore[attr-defined]
    assert subset(ds, None, seed=0) is ds and subset(ds, 100, seed=0) is ds
    assert subset(ds, 500, seed=0) is ds


# --- synthetic -----------------------------------------------------------------------------------

def test_synthetic_is_deterministic() -> None:
    x1, y1 = Synthetic(size=32, image_size=16).load().tensors
    x2, y2 = Synthetic(size=32, image_size=16).load().tensors
    x3, _ = Synthetic(size=32, image_size=16, seed=1).load().tensors
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert x1.shape == (32, 3, 16, 16) and 0 <= float(x1.min()) and float(x1.max()) <= 1
    assert int(y1.max()) < 10 and Synthetic(classes=3).num_classes() == 3


# --- imagefolder ---------------------------------------------------------------------------------

def write_image_folder(root: Path, sizes: dict[str, list[tuple[int, int]]]) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, shapes in sizes.items():
        (root / label).mkdir(parents=True)
        for i, (w, h) in enumerate(shapes):
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"img{i}.png")
    return root


@pytest.fixture()
def data_config_32() -> dict[str, object]:
    backbone = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32,
                                 depth=1, num_heads=2, num_classes=2)
    return NormalizedModel(backbone).data_config


def test_imagefolder_uses_the_model_data_config(tmp_path: Path,
                                                data_config_32: dict[str, object]) -> None:
    root = write_image_folder(tmp_path / "val", {"cat": [(64, 48), (100, 80)],
                                                 "dog": [(50, 70), (64, 64), (40, 90)]})
    source = ImageFolderData(root=str(root))
    assert source.num_classes() == 2
    x, y = all_items(source.load(data_config_32))
    assert x.shape == (5, 3, 32, 32)
    assert 0 <= float(x.min()) and float(x.max()) <= 1 and float(x.max()) > 0.5
    assert y.tolist() == [0, 0, 1, 1, 1]  # labels from the sorted folder names


def test_imagefolder_split_subfolder(tmp_path: Path, data_config_32: dict[str, object]) -> None:
    write_image_folder(tmp_path / "data" / "val", {"a": [(40, 40)], "b": [(40, 40)]})
    source = ImageFolderData(root=str(tmp_path / "data"), split="val")
    assert len(source.load(data_config_32)) == 2


def test_imagefolder_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="imagefolder: no such folder .*nowhere"):
        ImageFolderData(root=str(tmp_path / "nowhere")).load(None)


def test_imagefolder_without_images(tmp_path: Path) -> None:
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="imagefolder"):
        ImageFolderData(root=str(tmp_path / "empty")).load(None)


# --- cifar10 -------------------------------------------------------------------------------------

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]


def write_fake_cifar(root: Path, per_batch: int = 3) -> Path:
    """torchvision's cifar-10-batches-py layout with a few random images per batch file."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        batch = {"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": [(i + j) % 10 for j in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR_CLASSES}))
    return root


@pytest.fixture()
def no_md5(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake files cannot match the real md5 sums: check only that the files exist."""
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())


def test_cifar10_loads_the_torchvision_layout(tmp_path: Path, no_md5: None,
                                              data_config_32: dict[str, object]) -> None:
    root = write_fake_cifar(tmp_path / "cifar")
    test = Cifar10(root=str(root)).load(data_config_32)
    train = Cifar10(root=str(root), split="train").load(None)
    assert (len(test), len(train)) == (3, 15)
    x, y = all_items(test)
    assert x.shape == (3, 3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert y.tolist() == [5, 6, 7]
    # native 32 px: a 32-px model gets the stored pixels unchanged (no resize, no crop)
    raw = pickle.loads((root / "cifar-10-batches-py" / "test_batch").read_bytes())["data"]
    expected = torch.tensor(raw.reshape(3, 3, 32, 32), dtype=torch.float32) / 255
    assert torch.allclose(x, expected, atol=1e-6)


def test_cifar10_missing_root_asks_for_download(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets.utils as tv_utils

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("download attempted with download: false")

    monkeypatch.setattr(tv_utils, "download_url", no_network)
    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", no_network)
    with pytest.raises(DataError, match=r"cifar10 at .*nowhere.*download: true"):
        Cifar10(root=str(tmp_path / "nowhere")).load(None)


def test_cifar10_incomplete_root(tmp_path: Path, no_md5: None) -> None:
    root = write_fake_cifar(tmp_path / "cifar")
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataError, match="download: true"):
        Cifar10(root=str(root)).load(None)
