"""Shared by the probe tests (occlusion, fourier): a digits slice and a CellContext over it."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from robustbench_vit.data.datasets import Digits
from robustbench_vit.scenarios.base import CellContext


def first_test_digits(n: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` test-split digits."""
    x, y = Digits(split="test").load().tensors
    return x[:n], y[:n]


def context(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], seed: int = 0,
            batch_size: int = 50, first_batch: int = 0) -> CellContext:
    """A CPU cell context over `data` in batches of `batch_size`."""
    return CellContext(model=model, loader=DataLoader(TensorDataset(*data), batch_size=batch_size),
                       device=torch.device("cpu"), seed=seed, num_classes=10, data_key="slice",
                       first_batch=first_batch)
