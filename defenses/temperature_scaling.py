"""Attention temperature scaling: every attention softmax of the model takes its logits / T.

The model's family adapter lists every attention module of every stage (ViT, DeiT, BEiT, EVA-02,
CaiT self- and class-attention, Swin / Swin-V2 windows, all PiT stages, ConViT GPSA and MHSA,
XCiT XCA and class attention, Twins, LeViT, MViTv2); `tempered` divides each softmax input (or
SDPA logit) inside them by T. T > 1 flattens the attention maps; T = 1 is the undefended model,
bit for bit. Families without attention (CNNs) raise UnsupportedModel: the cell is skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated

from pydantic import Field
from torch import nn

from robustbench_vit.api import Defense, adapter_for, register_defense, tempered

log = logging.getLogger(__name__)


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Every attention module of every stage of `model` (wrapped or bare), per its family
    adapter; UnsupportedModel (with the adapter's reason) for models without attention."""
    adapter, net = adapter_for(model)
    return adapter.attention_modules(net)


def tempered_modules(model: nn.Module) -> list[nn.Module]:
    """The attention modules of `model`, all of them tempered by a defense's `apply`;
    ValueError when one is not (the model was not prepared)."""
    modules = attention_modules(model)
    plain = sorted({type(m).__name__ for m in modules if not getattr(m, "_rbv_tempered", False)})
    if plain:
        raise ValueError(f"{type(model).__name__}: attention modules {plain} were not prepared "
                         "by an attention defense's apply")
    return modules


def patch_attention(model: nn.Module, *, temperature: float = 1.0) -> list[nn.Module]:
    """Temper every attention module of `model` in place by `temperature` (a TAP input transform
    and map recording set by an earlier defense are kept); returns them."""
    return [tempered(attn, temperature=temperature,
                     record=bool(getattr(attn, "record_attention", False)))
            for attn in attention_modules(model)]


@register_defense("temperature_scaling")
@dataclass(frozen=True, kw_only=True)
class TemperatureScaling(Defense):
    """Attention temperature scaling: softmax(logits / T) in every attention module (T > 1
    flattens); plain attention computes softmax(q·kᵀ·d^−½ / T)."""

    temperature: Annotated[float, Field(gt=0)] = 2.0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def apply(self, model: nn.Module) -> nn.Module:
        patched = patch_attention(model, temperature=self.temperature)
        log.debug("attention temperature %.3g in %d modules", self.temperature, len(patched))
        return model
