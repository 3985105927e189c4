"""Expectation over transformation (Athalye et al. 2018) for attacking randomized models."""

from __future__ import annotations

import torch
from torch import nn


class EOTModel(nn.Module):
    """Averages the logits of `samples` forward passes of a randomized model.

    Each pass draws the model's randomness afresh (random ablations, noise, shuffled layers), so a
    gradient attack on this wrapper follows the expected gradient instead of one random draw.
    """

    def __init__(self, model: nn.Module, samples: int):
        super().__init__()
        if samples < 1:
            raise ValueError(f"EOT needs at least one sample, got {samples}")
        self.model = model
        self.samples = samples

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.model(x) for _ in range(self.samples)]).mean(0)
