"""Swin and Swin-V2: hierarchical stages of window-attention blocks (NHWC feature maps)."""

from __future__ import annotations

from typing import Any

from ..base import FamilyAdapter, Stage, nested_stages, pair, register_adapter


@register_adapter
class SwinAdapter(FamilyAdapter):
    """`layers[i].blocks` per stage; attention within (shifted) windows with a position bias."""

    family = "swin"
    timm_classes = ("SwinTransformer",)
    attention_classes = ("WindowAttention",)
    head_reads = "mean of the last stage's tokens"

    def stages(self, net: Any) -> list[Stage]:
        return nested_stages(net, "layers")

    def shuffle_stages(self, net: Any) -> list[Stage]:
        return self.stages(net)  # blocks of a stage keep the shape (window shifts alternate)

    def reorder_reason(self, net: Any) -> str:
        return (f"{type(net).__name__} is hierarchical ({len(self.stages(net))} stages of "
                "different widths): block order is defined for one sequence of same-shape blocks")

    def patch_size(self, net: Any) -> tuple[int, int]:
        return pair(net.patch_embed.patch_size)


@register_adapter
class SwinV2Adapter(SwinAdapter):
    """Swin-V2: cosine attention with a learned logit scale, log-spaced position bias."""

    family = "swinv2"
    timm_classes = ("SwinTransformerV2",)
