"""PiT: stages of ViT blocks joined by pooling layers; overlapping convolutional patch embedding."""

from __future__ import annotations

from typing import Any

from ..base import FamilyAdapter, Stage, nested_stages, pair, register_adapter


@register_adapter
class PitAdapter(FamilyAdapter):
    """`transformers[i].blocks` per stage; CLS (and DIST) tokens pass through the pooling."""

    family = "pit"
    timm_classes = ("PoolingVisionTransformer",)
    attention_classes = ("Attention",)
    head_reads = "CLS token (distilled models: mean of both heads in eval)"

    def stages(self, net: Any) -> list[Stage]:
        return nested_stages(net, "transformers")

    def shuffle_stages(self, net: Any) -> list[Stage]:
        return self.stages(net)

    def reorder_reason(self, net: Any) -> str:
        return (f"PiT is hierarchical ({len(self.stages(net))} stages joined by pooling): block "
                "order is defined for one sequence of same-shape blocks")

    def patch_size(self, net: Any) -> tuple[int, int]:
        return pair(net.patch_embed.conv.stride)  # tokens are `stride` pixels apart
