"""Square attack (Andriushchenko et al. 2020): score-based random search, no gradients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch
from pydantic import Field
from torch import nn

from robustbench_vit.api import Attack, Norm, register_attack

from ._common import require_torchattacks, run_torchattack


@register_attack("square")
@dataclass(frozen=True, kw_only=True)
class Square(Attack):
    """Square: query-only random search on the margin loss; exposes gradient masking."""

    needs_gradients: ClassVar[bool] = False
    returns_clean_on_failure: ClassVar[bool] = True

    def unbounded(self, dims: int) -> None:
        """None: a random search with a small query budget need not win even at eps 1 (50
        queries left 1 image in 10 of the two-class parity model correct); the check is for
        gradient attacks."""
        return None
    norm: Norm = "Linf"
    eps: Annotated[float, Field(ge=0)] = 8 / 255
    n_queries: Annotated[int, Field(ge=1)] = 5000
    p_init: Annotated[float, Field(gt=0, le=1)] = 0.8
    n_restarts: Annotated[int, Field(ge=1)] = 1

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                seed: int) -> torch.Tensor:
        if self.eps == 0:
            return x.clone()
        ta = require_torchattacks("square")
        with torch.no_grad():
            return run_torchattack(ta.Square, model, x, y, seed, norm=self.norm,
                                   eps=self.eps, n_queries=self.n_queries, p_init=self.p_init,
                                   n_restarts=self.n_restarts, seed=seed, loss="margin",
                                   resc_schedule=True)
