"""MViTv2: stages of pooling multi-scale attention blocks (the first block of a stage pools)."""

from __future__ import annotations

from typing import Any

from ..base import FamilyAdapter, Stage, nested_stages, pair, register_adapter


@register_adapter
class Mvitv2Adapter(FamilyAdapter):
    """`stages[i].blocks`, iterated by the stage with the feature size; relative position bias.
    No block may move: the first of each stage pools and widens."""

    family = "mvitv2"
    timm_classes = ("MultiScaleVit",)
    attention_classes = ("MultiScaleAttention", "MultiScaleAttentionPoolFirst")
    head_reads = "mean of the last stage's tokens (or CLS with use_cls_token)"

    def stages(self, net: Any) -> list[Stage]:
        return nested_stages(net, "stages")

    def reorder_reason(self, net: Any) -> str:
        return ("MViTv2 blocks are not interchangeable: the first block of each stage pools the "
                "query and widens the channels")

    def patch_size(self, net: Any) -> tuple[int, int]:
        return pair(net.patch_embed.proj.stride)
