"""PiT: stages of ViT blocks joined by pooling layers; overlapping convolutional patch embedding."""

from __future__ import annotations

from typing import Any

from ..base import HierarchicalAdapter, pair, register_adapter


@register_adapter
class PitAdapter(HierarchicalAdapter):
    """`transformers[i].blocks` per stage; CLS (and DIST) tokens pass through the pooling."""

    family = "pit"
    timm_classes = ("PoolingVisionTransformer",)
    attention_classes = ("Attention",)
    head_reads = "CLS token (distilled models: mean of both heads in eval)"
    stage_list = "transformers"
    joined_by = "joined by pooling"

    def patch_size(self, net: Any) -> tuple[int, int]:
        return pair(net.patch_embed.conv.stride)  # tokens are `stride` pixels apart
