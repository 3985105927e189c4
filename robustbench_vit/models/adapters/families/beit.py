"""BEiT: one self-iterated `blocks` list, relative position bias inside attention."""

from __future__ import annotations

from typing import Any

from ..base import SequenceAdapter, register_adapter


@register_adapter
class BeitAdapter(SequenceAdapter):
    """Blocks take a shared relative position bias; avg pooling over patch tokens by default."""

    family = "beit"
    timm_classes = ("Beit",)
    attention_classes = ("Attention",)
    head_reads = "mean of patch tokens (or CLS with global_pool=token)"

    def token_dropping(self, net: Any) -> str | None:
        return "beit: the relative position bias is indexed by the full token grid"
