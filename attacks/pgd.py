"""PGD (Madry et al. 2018): projected gradient descent on the cross-entropy, L∞ or L2, random
start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from robustbench_vit.api import Attack, Norm, register_attack

from ._common import require_torchattacks, run_torchattack


@register_attack("pgd")
@dataclass(frozen=True, kw_only=True)
class PGD(Attack):
    """PGD: `steps` projected steps (L∞ or L2) from a random start; alpha = 2.5·eps/steps."""

    norm: Norm = "Linf"
    eps: Annotated[float, Field(ge=0)] = 8 / 255
    steps: Annotated[int, Field(ge=1)] = 10
    alpha: Annotated[float, Field(gt=0)] | None = None
    random_start: bool = True

    def step_size(self) -> float:
        """alpha, or Madry et al.'s 2.5·eps/steps when unset."""
        return self.alpha if self.alpha is not None else 2.5 * self.eps / self.steps

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                seed: int) -> torch.Tensor:
        if self.eps == 0:
            return x.clone()
        ta = require_torchattacks("pgd")
        cls = ta.PGD if self.norm == "Linf" else ta.PGDL2
        return run_torchattack(cls, model, x, y, seed, eps=self.eps, alpha=self.step_size(),
                               steps=self.steps, random_start=self.random_start)
