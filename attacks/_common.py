"""Shared helpers of the first-party attacks (not an attack module: the name starts with "_")."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def run_torchattack(attack_cls: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    rng_seed: int, **kwargs: Any) -> torch.Tensor:
    """Run a torchattacks attack on [0,1] images with the global RNG seeded and then restored.

    Normalization stays inside our model, so torchattacks' own normalization is never set.
    """
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(rng_seed)
        attack = attack_cls(model, **kwargs)
        return attack(x, y).detach()
