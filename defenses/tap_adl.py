"""TAP + ADL (Guo et al. 2023): token-aware pooled attention inputs, attention-diversity loss.

ADL works on every family with attention: each attention module (all stages, per the family
adapter) records its head-averaged probabilities in training forward passes. TAP pools the input
of an attention module over its patch-token grid, so it needs the adapter's `token_grid` for every
attention module (ViT, DeiT, BEiT, EVA-02, CaiT, ConViT, XCiT); for the other families `tap: true`
raises UnsupportedModel and `tap: false` gives ADL alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from robustbench_vit.api import (
    Defense,
    FamilyAdapter,
    UnsupportedModel,
    adapter_for,
    register_defense,
    tempered,
)

from .temperature_scaling import tempered_modules

log = logging.getLogger(__name__)

DILATIONS: tuple[int, ...] = (0, 1, 2, 3)


def dilated_average(grid: torch.Tensor, dilation: int) -> torch.Tensor:
    """3×3 average, dilation and zero padding `dilation`, always divided by 9 (identity at 0)."""
    if dilation == 0:
        return grid
    channels = grid.shape[1]
    kernel = grid.new_full((channels, 1, 3, 3), 1.0 / 9.0)
    return F.conv2d(grid, kernel, padding=dilation, dilation=dilation, groups=channels)


class TokenAwarePooling(nn.Module):
    """TAP: per-token softmax weights over dilated 3×3 averages of the patch-token grid.

    Prefix tokens (CLS, registers) pass unpooled. The predictor's last convolution starts at zero,
    so a fresh TAP weights every branch equally (w = 1/K); fine-tuning learns the token-aware mix.
    """

    def __init__(self, dim: int, num_prefix_tokens: int, grid_size: tuple[int, int],
                 dilations: tuple[int, ...] = DILATIONS) -> None:
        super().__init__()
        k = len(dilations)
        self.dilations = tuple(dilations)
        self.num_prefix_tokens = num_prefix_tokens
        self.grid_size = tuple(grid_size)
        first = nn.Conv2d(dim, k, 3, padding=1, bias=False)
        last = nn.Conv2d(k, k, 3, padding=1, bias=False)
        nn.init.zeros_(last.weight)
        self.predictor = nn.Sequential(first, nn.BatchNorm2d(k), last)

    def branch_weights(self, grid: torch.Tensor) -> torch.Tensor:
        """Per-token branch weights (B, K, H, W), summing to 1 over K."""
        return self.predictor(grid).softmax(dim=1)

    def to_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """Patch tokens (B, H·W, C) as a (B, C, H, W) grid."""
        b, n, c = tokens.shape
        h, w = self.grid_size
        if h * w != n:
            raise ValueError(f"TAP expects {h}×{w} patch tokens, got {n}")
        return tokens.transpose(1, 2).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prefix, tokens = x[:, :self.num_prefix_tokens], x[:, self.num_prefix_tokens:]
        grid = self.to_grid(tokens)
        weights = self.branch_weights(grid)
        pooled = sum(weights[:, i:i + 1] * dilated_average(grid, d)
                     for i, d in enumerate(self.dilations))
        return torch.cat([prefix, pooled.flatten(2).transpose(1, 2)], dim=1)  # type: ignore[union-attr]


def attention_diversification(maps: list[torch.Tensor]) -> torch.Tensor:
    """ADL: mean over modules of the mean cosine between each attention row and the mean row.

    `maps` are head-averaged attention probabilities (B, N, M); entries ≤ 2/M are zeroed in the
    rows and in the mean row before the cosine. Maps with a single row (class attention: the CLS
    query alone) have no diversity to measure and are left out.
    """
    sims = []
    for m in maps:
        if m.shape[-2] < 2:
            continue
        n = m.shape[-1]
        mean_row = m.mean(dim=1, keepdim=True)
        m = m * (m > 2.0 / n)
        mean_row = mean_row * (mean_row > 2.0 / n)
        sims.append(F.cosine_similarity(m, mean_row.expand_as(m), dim=-1, eps=1e-8).mean())
    if not sims:
        raise ValueError("ADL needs an attention map with more than one query row")
    return torch.stack(sims).mean()


def input_width(attn: nn.Module) -> int:
    """Channels C of the (B, N, C) input of `attn`: the in_features of its first projection
    (qkv, qk (ConViT GPSA), q (CaiT / XCiT class attention, Twins), q_proj (unfused EVA)), else
    its `dim`."""
    for name in ("qkv", "qk", "q", "q_proj"):
        proj = getattr(attn, name, None)
        if isinstance(proj, nn.Linear):
            return proj.in_features
    dim = getattr(attn, "dim", None)
    if isinstance(dim, int):
        return dim
    raise UnsupportedModel(f"{type(attn).__name__}: the width of its input is not known, "
                           "TAP cannot be built for it; `tap: false` gives ADL alone")


def token_aware_pooling(adapter: FamilyAdapter, net: nn.Module,
                        modules: list[nn.Module]) -> list[nn.Module]:
    """A fresh TokenAwarePooling for the input of each of `modules` of `net`; UnsupportedModel
    (saying that `tap: false` gives ADL alone) when the family has no token grid for one."""
    taps: list[nn.Module] = []
    for attn in modules:
        try:
            prefix, grid = adapter.token_grid(net, attn)
        except UnsupportedModel as exc:
            raise UnsupportedModel(f"tap_adl: TAP cannot pool the input of {type(attn).__name__}: "
                                   f"{exc}; `tap: false` gives ADL alone") from exc
        taps.append(TokenAwarePooling(input_width(attn), prefix, grid))
    return taps


@register_defense("tap_adl")
@dataclass(frozen=True, kw_only=True)
class TapAdl(Defense):
    """TAP + ADL (Guo et al. 2023): token-aware pooled attention inputs, attention diversity loss.

    Initialization: the TAP predictor's last convolution starts at zero, so the branch weights
    start uniform (w = 1/4); fine-tuning (8 epochs by default) learns the token-aware mix.
    """

    stage = "training"

    tap: bool = True
    adl_weight: Annotated[float, Field(ge=0)] = 1.0
    epochs: Annotated[int, Field(ge=1)] = 8
    lr: Annotated[float, Field(gt=0)] = 1e-3

    def apply(self, model: nn.Module) -> nn.Module:
        adapter, net = adapter_for(model)
        modules = adapter.attention_modules(net)  # UnsupportedModel without attention
        taps = token_aware_pooling(adapter, net, modules) if self.tap else [None] * len(modules)
        for attn, tap in zip(modules, taps, strict=True):  # nothing changes before this loop
            tempered(attn, temperature=1.0, tap=tap, record=self.adl_weight > 0)
        log.debug("tap_adl: %d attention modules, TAP %s", len(modules), self.tap)
        return model

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      logits: torch.Tensor) -> torch.Tensor | None:
        if self.adl_weight == 0:
            return None
        modules = tempered_modules(model)
        if any(getattr(m, "last_attn", None) is None for m in modules):
            was_training = model.training  # `logits` came from an eval-mode pass
            model.train()
            model(x)
            model.train(was_training)
        maps = [getattr(m, "last_attn", None) for m in modules]
        for m in modules:
            m.last_attn = None  # type: ignore[assignment]  # drop the graph reference
        missing = [type(m).__name__ for m, a in zip(modules, maps, strict=True) if a is None]
        if missing:
            raise RuntimeError(f"tap_adl: attention modules {missing} recorded no maps")
        return self.adl_weight * attention_diversification(maps)  # type: ignore[arg-type]
