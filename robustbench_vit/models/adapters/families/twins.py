"""Twins (PCPVT / SVT): stages of locally-grouped and global sub-sampled attention blocks."""

from __future__ import annotations

from typing import Any

from ..base import HierarchicalAdapter, Stage, pair, register_adapter


@register_adapter
class TwinsAdapter(HierarchicalAdapter):
    """`blocks[i]` per stage, iterated by the model (a position generator after block 0)."""

    family = "twins"
    timm_classes = ("Twins",)
    attention_classes = ("LocallyGroupedAttn", "GlobalSubSampleAttn")
    head_reads = "mean of the last stage's tokens"

    def stages(self, net: Any) -> list[Stage]:
        return [Stage(f"blocks.{i}", net.blocks, str(i)) for i in range(len(net.blocks))]

    def patch_size(self, net: Any) -> tuple[int, int]:
        return pair(net.patch_embeds[0].patch_size)
