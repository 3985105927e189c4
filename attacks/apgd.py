"""APGD (Croce & Hein 2020): step-size-free PGD with momentum, on the CE or the DLR loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch
from pydantic import Field
from torch import nn

from robustbench_vit.api import Attack, Norm, register_attack

from ._common import require_torchattacks, run_torchattack


@dataclass(frozen=True, kw_only=True)
class _APGD(Attack):
    loss: ClassVar[str]
    returns_clean_on_failure: ClassVar[bool] = True
    norm: Norm = "Linf"
    eps: Annotated[float, Field(ge=0)] = 8 / 255
    steps: Annotated[int, Field(ge=1)] = 100
    n_restarts: Annotated[int, Field(ge=1)] = 1
    rho: Annotated[float, Field(gt=0, lt=1)] = 0.75

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                seed: int) -> torch.Tensor:
        if self.eps == 0:
            return x.clone()
        ta = require_torchattacks("apgd_" + self.loss)
        return run_torchattack(ta.APGD, model, x, y, seed, norm=self.norm, eps=self.eps,
                               steps=self.steps, n_restarts=self.n_restarts, seed=seed,
                               loss=self.loss, rho=self.rho)


@register_attack("apgd_ce")
@dataclass(frozen=True, kw_only=True)
class APGDCE(_APGD):
    """APGD-CE: Auto-PGD on the cross-entropy loss (AutoAttack's first stage)."""

    loss: ClassVar[str] = "ce"


@register_attack("apgd_dlr")
@dataclass(frozen=True, kw_only=True)
class APGDDLR(_APGD):
    """APGD-DLR: Auto-PGD on the scale-invariant difference-of-logits-ratio loss."""

    loss: ClassVar[str] = "dlr"
    min_classes: ClassVar[int] = 3  # DLR divides by the gap between the 1st and 3rd logit
