"""XCiT: cross-covariance attention blocks over patch tokens, then class-attention blocks."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..base import SequenceAdapter, Stage, pair, register_adapter, single_stage


@register_adapter
class XcitAdapter(SequenceAdapter):
    """`blocks` (XCA, no CLS) take (x, H, W); `cls_attn_blocks` run on CLS + patches, a separate
    head stage that is never reordered."""

    family = "xcit"
    timm_classes = ("Xcit",)
    attention_classes = ("XCA", "ClassAttn")
    head_reads = "CLS token after the class-attention blocks"

    def stages(self, net: Any) -> list[Stage]:
        return single_stage(net) + single_stage(net, "cls_attn_blocks")

    def token_grid(self, net: Any, attn: nn.Module) -> tuple[int, tuple[int, int]]:
        prefix = 1 if type(attn).__name__ == "ClassAttn" else 0
        p = pair(net.patch_embed.patch_size)
        h, w = pair(net.patch_embed.img_size)
        return prefix, (h // p[0], w // p[1])
