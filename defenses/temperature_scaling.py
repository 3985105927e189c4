"""Attention temperature scaling: softmax(q·kᵀ·d^−½ / T) in every block (T > 1 flattens)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field
from timm.layers import Attention
from torch import nn

from robustbench_vit.api import Defense, ScenarioNotApplicable, backbone_of, register_defense

log = logging.getLogger(__name__)


class PatchedAttention(Attention):
    """timm Attention with a softmax temperature, an optional input transform and recorded maps.

    Instances are made by `adopt` (a class swap of an existing timm Attention), so the state_dict
    keys of the original parameters stay the same. `tap` (a module or None) transforms the input
    of attention only. With `record_attention` set, training forward passes take the explicit path
    and keep the head-averaged attention probabilities (B, N, N), with gradients, in `last_attn`.
    """

    temperature: float
    record_attention: bool
    last_attn: torch.Tensor | None

    @classmethod
    def adopt(cls, attn: Attention, *, temperature: float = 1.0,
              tap: nn.Module | None = None) -> PatchedAttention:
        """Turn the timm Attention `attn` into a PatchedAttention in place; returns it."""
        attn.__class__ = cls
        patched: PatchedAttention = attn  # type: ignore[assignment]
        patched.temperature = float(temperature)
        if tap is not None:
            patched.tap = tap
        elif "tap" not in patched._modules:
            patched.tap = None
        patched.record_attention = False
        patched.last_attn = None
        return patched

    def _scale(self) -> float | None:
        """The q·kᵀ factor for SDPA (None: its default, bit-identical to the unpatched model)."""
        return None if self.temperature == 1.0 else self.scale / self.temperature

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                is_causal: bool = False) -> torch.Tensor:
        if self.tap is not None:
            x = self.tap(x)
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if getattr(self, "gate", None) is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        record = self.record_attention and self.training
        if self.fused_attn and not record:
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop.p if self.training else 0.0,
                is_causal=is_causal, scale=self._scale())
        else:
            x = self._explicit(q, k, v, attn_mask, is_causal, record)
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))

    def _explicit(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  attn_mask: torch.Tensor | None, is_causal: bool, record: bool) -> torch.Tensor:
        n = q.shape[-2]
        attn = (q * (self.scale / self.temperature)) @ k.transpose(-2, -1)
        if is_causal:
            attn = attn + attn.new_full((n, n), float("-inf")).triu_(1)
        elif attn_mask is not None:
            attn = attn.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
                else attn + attn_mask
        attn = attn.softmax(dim=-1)
        if record:
            self.last_attn = attn.mean(dim=1)
        return self.attn_drop(attn) @ v


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The attention module of every encoder block; ValueError when they are not timm Attention."""
    try:
        blocks = backbone_of(model).blocks
    except ScenarioNotApplicable as exc:
        raise ValueError(f"{type(model).__name__} has no encoder blocks: attention defenses need a "
                         f"timm VisionTransformer-style model") from exc
    modules = [getattr(block, "attn", None) for block in blocks]
    bad = {type(m).__name__ for m in modules if not isinstance(m, Attention)}
    if bad or not modules:
        raise ValueError(f"{type(model).__name__} has blocks whose attention is {sorted(bad)}, not "
                         f"timm Attention: attention defenses need timm-style attention blocks")
    return modules


def patch_attention(model: nn.Module, *, temperature: float = 1.0,
                    taps: list[nn.Module] | None = None) -> list[PatchedAttention]:
    """Patch every block's attention in place (temperature, optional per-block input transforms)."""
    modules = attention_modules(model)
    taps = taps if taps is not None else [None] * len(modules)  # type: ignore[list-item]
    return [PatchedAttention.adopt(m, temperature=temperature, tap=t)  # type: ignore[arg-type]
            for m, t in zip(modules, taps, strict=True)]


@register_defense("temperature_scaling")
@dataclass(frozen=True, kw_only=True)
class TemperatureScaling(Defense):
    """Attention temperature scaling: softmax(q·kᵀ·d^−½ / T) in every block (T > 1 flattens)."""

    temperature: Annotated[float, Field(gt=0)] = 2.0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def apply(self, model: nn.Module) -> nn.Module:
        patched = patch_attention(model, temperature=self.temperature)
        log.debug("attention temperature %.3g in %d blocks", self.temperature, len(patched))
        return model
