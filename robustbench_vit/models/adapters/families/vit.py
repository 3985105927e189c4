"""timm VisionTransformer (vit, deit, register-token and dinov2 models) and DeiT-distilled."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..base import SequenceAdapter, register_adapter


@register_adapter
class VitAdapter(SequenceAdapter):
    """One `blocks` Sequential; prefix CLS (then register tokens); absolute positions."""

    family = "vit"
    timm_classes = ("VisionTransformer",)
    attention_classes = ("Attention", "AttentionPoolLatent")
    head_reads = "CLS token (global_pool=token) or the mean of patch tokens (avg)"

    def prefix_token_names(self, net: Any) -> list[str]:
        """Names of the prefix token parameters, in sequence order."""
        return [n for n in ("cls_token", "reg_token") if getattr(net, n, None) is not None]

    def token_dropping(self, net: Any) -> str | None:
        embed = net.patch_embed
        proj = getattr(embed, "proj", None)
        plain = isinstance(proj, nn.Conv2d) and proj.stride == proj.kernel_size \
            and proj.padding == (0, 0) and proj.groups == 1 and getattr(embed, "flatten", False)
        if not plain or getattr(net, "dynamic_img_size", False):
            return (f"{self.family}: token dropping needs a plain stride-p patch convolution and "
                    "a fixed image size")
        pool = getattr(net, "global_pool", "token")
        if pool not in ("token", "avg") or getattr(net, "attn_pool", None) is not None:
            return f"{self.family}: token dropping supports token or avg pooling, not {pool!r}"
        if not isinstance(getattr(net, "patch_drop", nn.Identity()), nn.Identity):
            return f"{self.family}: patch dropout (patch_drop_rate > 0) reorders tokens in training"
        if getattr(net, "rope", None) is not None:
            return f"{self.family}: rotary position embeddings depend on the full grid"
        return None


@register_adapter
class DeitDistilledAdapter(VitAdapter):
    """VisionTransformerDistilled: CLS and distillation tokens; eval averages both heads."""

    family = "deit"
    timm_classes = ("VisionTransformerDistilled",)
    head_reads = "mean of head(CLS) and head_dist(DIST) in eval"

    def prefix_token_names(self, net: Any) -> list[str]:
        return ["cls_token", "dist_token"]
