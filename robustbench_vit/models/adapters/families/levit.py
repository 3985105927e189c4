"""LeViT: convolutional stem, stages of attention / MLP residual blocks with attention biases."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..base import HierarchicalAdapter, register_adapter


@register_adapter
class LevitAdapter(HierarchicalAdapter):
    """`stages[i].blocks`; attention-downsampling between stages; distilled models average heads."""

    family = "levit"
    timm_classes = ("Levit",)
    attention_classes = ("Attention", "AttentionDownsample")
    head_reads = "mean of the last stage's tokens (distilled: mean of both heads in eval)"

    def patch_size(self, net: Any) -> tuple[int, int]:
        h = w = 1
        for m in net.stem.modules():
            if isinstance(m, nn.Conv2d):
                h, w = h * m.stride[0], w * m.stride[1]
        return h, w
