"""EVA / EVA-02: one self-iterated `blocks` list, rotary position embeddings."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..base import FamilyAdapter, Stage, pair, register_adapter, single_stage


@register_adapter
class EvaAdapter(FamilyAdapter):
    """Blocks take the rotary embedding of the full grid; avg pooling by default."""

    family = "eva02"
    timm_classes = ("Eva",)
    attention_classes = ("EvaAttention", "AttentionPoolLatent")
    head_reads = "mean of patch tokens (or CLS with global_pool=token)"

    def stages(self, net: Any) -> list[Stage]:
        return single_stage(net)

    def shuffle_stages(self, net: Any) -> list[Stage]:
        return self.stages(net)

    def order_stage(self, net: Any) -> Stage:
        return self.stages(net)[0]

    def token_grid(self, net: Any, attn: nn.Module) -> tuple[int, tuple[int, int]]:
        if getattr(net, "dynamic_img_size", False):
            return super().token_grid(net, attn)
        return int(net.num_prefix_tokens), pair(net.patch_embed.grid_size)

    def patch_size(self, net: Any) -> tuple[int, int]:
        return pair(net.patch_embed.patch_size)

    def token_dropping(self, net: Any) -> str | None:
        return "eva02: rotary position embeddings are computed for the full token grid"
