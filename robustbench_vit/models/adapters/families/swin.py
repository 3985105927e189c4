"""Swin and Swin-V2: hierarchical stages of window-attention blocks (NHWC feature maps)."""

from __future__ import annotations

from typing import Any

from ..base import HierarchicalAdapter, pair, register_adapter


@register_adapter
class SwinAdapter(HierarchicalAdapter):
    """`layers[i].blocks` per stage; attention within (shifted) windows with a position bias."""

    family = "swin"
    timm_classes = ("SwinTransformer",)
    attention_classes = ("WindowAttention",)
    head_reads = "mean of the last stage's tokens"
    stage_list = "layers"

    def patch_size(self, net: Any) -> tuple[int, int]:
        return pair(net.patch_embed.patch_size)


@register_adapter
class SwinV2Adapter(SwinAdapter):
    """Swin-V2: cosine attention with a learned logit scale, log-spaced position bias."""

    family = "swinv2"
    timm_classes = ("SwinTransformerV2",)
