"""EVA / EVA-02: one self-iterated `blocks` list, rotary position embeddings."""

from __future__ import annotations

from typing import Any

from ..base import SequenceAdapter, register_adapter


@register_adapter
class EvaAdapter(SequenceAdapter):
    """Blocks take the rotary embedding of the full grid; avg pooling by default."""

    family = "eva02"
    timm_classes = ("Eva",)
    attention_classes = ("EvaAttention", "AttentionPoolLatent")
    head_reads = "mean of patch tokens (or CLS with global_pool=token)"

    def token_dropping(self, net: Any) -> str | None:
        return "eva02: rotary position embeddings are computed for the full token grid"
