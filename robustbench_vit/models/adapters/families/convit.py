"""ConViT: gated positional self-attention blocks, then MHSA blocks after the CLS token joins."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..base import SequenceAdapter, Stage, UnsupportedModel, pair, register_adapter


@register_adapter
class ConvitAdapter(SequenceAdapter):
    """The CLS token is concatenated before block `local_up_to_layer`, inside the block loop, so
    the blocks are not interchangeable."""

    family = "convit"
    timm_classes = ("ConVit",)
    attention_classes = ("GPSA", "MHSA")
    head_reads = "CLS token"

    def reorder_reason(self, net: Any) -> str:
        return (f"ConViT inserts the CLS token before block {net.local_up_to_layer} inside its "
                "block loop: GPSA blocks before it and MHSA blocks after it take different token "
                "sequences, and removing blocks would drop the CLS token")

    def shuffle_stages(self, net: Any) -> list[Stage]:
        raise UnsupportedModel(f"{self.family}: {self.reorder_reason(net)}")

    def order_stage(self, net: Any) -> Stage:
        raise UnsupportedModel(f"{self.family}: {self.reorder_reason(net)}")

    def token_grid(self, net: Any, attn: nn.Module) -> tuple[int, tuple[int, int]]:
        prefix = 1 if type(attn).__name__ == "MHSA" else 0
        return prefix, pair(net.patch_embed.grid_size)
