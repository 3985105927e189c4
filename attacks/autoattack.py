"""AutoAttack (Croce & Hein 2020), run by the original authors' code (`pyautoattack`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from robustbench_vit.api import Attack, Norm, register_attack

log = logging.getLogger(__name__)


@register_attack("autoattack")
@dataclass(frozen=True, kw_only=True)
class AutoAttack(Attack):
    """AutoAttack standard: APGD-CE, APGD-T (9 targets), FAB-T, Square 5000; worst per image."""

    min_classes: ClassVar[int] = 4  # targeted DLR uses the 4th-largest logit
    returns_clean_on_failure: ClassVar[bool] = True
    norm: Norm = "Linf"
    eps: Annotated[float, Field(ge=0)] = 8 / 255
    version: Literal["standard", "plus", "rand"] = "standard"
    batch_size: Annotated[int, Field(ge=1)] = 500

    def build(self, model: nn.Module, device: torch.device, seed: int) -> Any:
        """The original AutoAttack object, configured by its own `version` presets."""
        from pyautoattack import AutoAttack as Original

        return Original(model, norm=self.norm, eps=self.eps, version=self.version, seed=seed,
                        device=device)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                seed: int) -> torch.Tensor:
        if self.eps == 0:
            return x.clone()
        runner = self.build(model, x.device, seed)
        with torch.no_grad():
            classes = model(x[:1]).shape[1]
        if classes <= runner.apgd_targeted.n_target_classes:
            # the original's 9 targets need >= 10 classes; with fewer, target every other class
            runner.apgd_targeted.n_target_classes = runner.fab.n_target_classes = classes - 1
        runner.verbose = log.isEnabledFor(logging.DEBUG)
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the original reseeds torch's global RNG
            x_adv, _ = runner.run_standard_evaluation(x, y, batch_size=self.batch_size)
        return x_adv.detach()
