"""AutoAttack (Croce & Hein 2020), run by the original authors' code (`pyautoattack`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import nn

from robustbench_vit.api import Attack, Norm, register_attack

log = logging.getLogger(__name__)


@register_attack("autoattack")
@dataclass(frozen=True, kw_only=True)
class AutoAttack(Attack):
    """AutoAttack standard: APGD-CE, APGD-T (9 targets), FAB-T, Square (5000 queries); worst case per image."""

    norm: Norm = "Linf"
    eps: Annotated[float, Field(ge=0)] = 8 / 255
    version: Literal["standard", "plus", "rand"] = "standard"
    batch_size: Annotated[int, Field(ge=1)] = 500

    def build(self, model: nn.Module, device: torch.device, seed: int) -> Any:
        """The original AutoAttack object, configured by its own `version` presets."""
        from pyautoattack import AutoAttack as Original

        return Original(model, norm=self.norm, eps=self.eps, version=self.version, seed=seed,
                        device=device)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, seed: int) -> torch.Tensor:
        if self.eps == 0:
            return x.clone()
        runner = self.build(model, x.device, seed)
        runner.verbose = log.isEnabledFor(logging.DEBUG)
        x_adv, _ = runner.run_standard_evaluation(x, y, batch_size=self.batch_size)
        return x_adv.detach()
