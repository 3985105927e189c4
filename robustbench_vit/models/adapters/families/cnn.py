"""CNN controls (ResNet, ConvNeXt): no tokens, no attention; pixel-space defenses still apply."""

from __future__ import annotations

from ..base import FamilyAdapter, register_adapter


@register_adapter
class ResnetAdapter(FamilyAdapter):
    """A ResNet: pixel-space defenses and scenarios only."""

    family = "resnet"
    timm_classes = ("ResNet",)
    no_attention = "a ResNet has no attention"
    head_reads = "global average pool, fc"


@register_adapter
class ConvnextAdapter(FamilyAdapter):
    """A ConvNeXt: pixel-space defenses and scenarios only."""

    family = "convnext"
    timm_classes = ("ConvNeXt",)
    no_attention = "a ConvNeXt has no attention"
    head_reads = "global average pool, norm, fc"
