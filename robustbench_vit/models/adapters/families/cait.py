"""CaiT: self-attention `blocks` (talking heads, no CLS), then class-attention blocks."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..base import FamilyAdapter, Stage, pair, register_adapter, single_stage


@register_adapter
class CaitAdapter(FamilyAdapter):
    """The CLS token joins only in `blocks_token_only` (class attention over CLS + patches)."""

    family = "cait"
    timm_classes = ("Cait",)
    attention_classes = ("TalkingHeadAttn", "ClassAttn")
    head_reads = "CLS token after the class-attention blocks"

    def stages(self, net: Any) -> list[Stage]:
        return single_stage(net) + single_stage(net, "blocks_token_only")

    def shuffle_stages(self, net: Any) -> list[Stage]:
        return single_stage(net)  # class-attention blocks take (patches, cls): a separate head

    def order_stage(self, net: Any) -> Stage:
        return single_stage(net)[0]

    def token_grid(self, net: Any, attn: nn.Module) -> tuple[int, tuple[int, int]]:
        prefix = 1 if type(attn).__name__ == "ClassAttn" else 0
        return prefix, pair(net.patch_embed.grid_size)

    def patch_size(self, net: Any) -> tuple[int, int]:
        return pair(net.patch_embed.patch_size)
