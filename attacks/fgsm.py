"""FGSM (Goodfellow et al. 2015): one signed-gradient step of size eps (L∞)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from robustbench_vit.api import Attack, register_attack

from ._common import require_torchattacks, run_torchattack


@register_attack("fgsm")
@dataclass(frozen=True, kw_only=True)
class FGSM(Attack):
    """FGSM: a single L∞ signed-gradient step of size eps on the cross-entropy."""

    eps: Annotated[float, Field(ge=0, le=1)] = 8 / 255

    def unbounded(self, dims: int) -> None:
        """None: one signed step of size 1 lands on a corner of the image cube, which need not
        fool the model (digits_vit keeps ~10% of images there); it is no test of the gradient."""
        return None

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                seed: int) -> torch.Tensor:
        if self.eps == 0:
            return x.clone()
        ta = require_torchattacks("fgsm")
        return run_torchattack(ta.FGSM, model, x, y, seed, eps=self.eps)
