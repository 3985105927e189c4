"""BEiT: one self-iterated `blocks` list, relative position bias inside attention."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..base import FamilyAdapter, Stage, pair, register_adapter, single_stage


@register_adapter
class BeitAdapter(FamilyAdapter):
    """Blocks take a shared relative position bias; avg pooling over patch tokens by default."""

    family = "beit"
    timm_classes = ("Beit",)
    attention_classes = ("Attention",)
    head_reads = "mean of patch tokens (or CLS with global_pool=token)"

    def stages(self, net: Any) -> list[Stage]:
        return single_stage(net)

    def shuffle_stages(self, net: Any) -> list[Stage]:
        return self.stages(net)

    def order_stage(self, net: Any) -> Stage:
        return self.stages(net)[0]

    def token_grid(self, net: Any, attn: nn.Module) -> tuple[int, tuple[int, int]]:
        return int(net.num_prefix_tokens), pair(net.patch_embed.grid_size)

    def patch_size(self, net: Any) -> tuple[int, int]:
        return pair(net.patch_embed.patch_size)

    def token_dropping(self, net: Any) -> str | None:
        return "beit: the relative position bias is indexed by the full token grid"
