"""CaiT: self-attention `blocks` (talking heads, no CLS), then class-attention blocks."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..base import SequenceAdapter, Stage, pair, register_adapter, single_stage


@register_adapter
class CaitAdapter(SequenceAdapter):
    """The CLS token joins only in `blocks_token_only` (class attention over CLS + patches), a
    separate head stage that is never reordered."""

    family = "cait"
    timm_classes = ("Cait",)
    attention_classes = ("TalkingHeadAttn", "ClassAttn")
    head_reads = "CLS token after the class-attention blocks"

    def stages(self, net: Any) -> list[Stage]:
        return single_stage(net) + single_stage(net, "blocks_token_only")

    def token_grid(self, net: Any, attn: nn.Module) -> tuple[int, tuple[int, int]]:
        prefix = 1 if type(attn).__name__ == "ClassAttn" else 0
        return prefix, pair(net.patch_embed.grid_size)
