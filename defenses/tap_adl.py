"""TAP + ADL (Guo et al. 2023): token-aware pooled attention inputs, attention-diversity loss."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from robustbench_vit.api import Defense, backbone_of, register_defense

from .temperature_scaling import PatchedAttention, attention_modules, patch_attention

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
        self.predictor = nn.Sequential(
            nn.Conv2d(dim, k, 3, padding=1, bias=False),
            nn.BatchNorm2d(k),
            nn.Conv2d(k, k, 3, padding=1, bias=False),
        )
        nn.init.zeros_(self.predictor[2].weight)

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
    """ADL: mean over blocks of the mean cosine between each attention row and the mean row.

    `maps` are head-averaged attention probabilities (B, N, N); entries ≤ 2/N are zeroed in the
    rows and in the mean row before the cosine.
    """
    sims = []
    for m in maps:
        n = m.shape[-1]
        mean_row = m.mean(dim=1, keepdim=True)
        m = m * (m > 2.0 / n)
        mean_row = mean_row * (mean_row > 2.0 / n)
        sims.append(F.cosine_similarity(m, mean_row.expand_as(m), dim=-1, eps=1e-8).mean())
    return torch.stack(sims).mean()


def patched_attention(model: nn.Module) -> list[PatchedAttention]:
    """The patched attention modules of `model` (after `TapAdl.apply`)."""
    modules = attention_modules(model)
    if not all(isinstance(m, PatchedAttention) for m in modules):
        raise ValueError(f"{type(model).__name__} was not prepared by tap_adl.apply")
    return modules  # type: ignore[return-value]


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
        attention_modules(model)  # ValueError for models without timm attention blocks
        backbone = backbone_of(model)
        taps = None
        if self.tap:
            grid = tuple(backbone.patch_embed.grid_size)
            prefix = int(getattr(backbone, "num_prefix_tokens", 1))
            taps = [TokenAwarePooling(block.attn.qkv.in_features, prefix, grid)
                    for block in backbone.blocks]
        for attn in patch_attention(model, taps=taps):
            attn.record_attention = self.adl_weight > 0
        return model

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      logits: torch.Tensor) -> torch.Tensor | None:
        if self.adl_weight == 0:
            return None
        modules = patched_attention(model)
        if any(m.last_attn is None for m in modules):  # `logits` came from an eval-mode pass
            was_training = model.training
            model.train()
            model(x)
            model.train(was_training)
        maps = [m.last_attn for m in modules]
        for m in modules:
            m.last_attn = None  # drop the graph reference once consumed
        return self.adl_weight * attention_diversification(maps)  # type: ignore[arg-type]
