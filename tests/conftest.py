"""Shared fixtures: a test cache folder, the trained digits model, a batch of digits images."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# Zoo checkpoints for tests live in a repo-local (git-ignored) cache, reused across runs.
os.environ.setdefault("RBV_CACHE", str(REPO / ".cache" / "test"))


@pytest.fixture(scope="session")
def rbv_bin() -> str:
    """The installed `rbv` console script."""
    beside = Path(sys.executable).parent / "rbv"
    path = str(beside) if beside.is_file() else shutil.which("rbv")
    assert path, "the rbv console script is not installed (pip install -e .)"
    return path


@pytest.fixture(scope="session")
def digits_model() -> torch.nn.Module:
    """The digits_vit zoo model (trained once into the test cache)."""
    from robustbench_vit.core.cells import ModelConfig
    from robustbench_vit.core.plugins import load_plugins
    from robustbench_vit.models.sources import build_model

    load_plugins()
    model = build_model(ModelConfig(name="vit", source="zoo:digits_vit"), "cpu")
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@pytest.fixture(scope="session")
def digits_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """64 test-split digits images and labels."""
    from robustbench_vit.data.datasets import Digits

    ds = Digits(split="test").load()
    x, y = ds.tensors
    return x[:64].clone(), y[:64].clone()


@pytest.fixture()
def results_dir(tmp_path: Path) -> Path:
    """A fresh results folder."""
    return tmp_path / "results"
