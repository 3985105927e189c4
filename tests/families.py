"""Tiny random-init timm models of every family the adapters know (shared by the family tests).

`FAMILIES[family] = (timm architecture, kwargs)`; every model takes 32 px images except LeViT
(64 px: its 16 px stem leaves a 2x2 grid at 32 px, and 1-token attention has no temperature).
`build(family)` returns the model wrapped like a suite's model (NormalizedModel), in eval mode,
with parameters re-drawn (timm zero-initializes some output projections and BatchNorm weights,
which hides what attention does).
"""

from __future__ import annotations

from typing import Any

import torch

FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "vit": ("vit_tiny_patch16_224",
            {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2}),
    "vit_reg": ("vit_base_patch14_reg4_dinov2",
                {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2}),
    "deit": ("deit_tiny_distilled_patch16_224",
             {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2}),
    "beit": ("beit_base_patch16_224",
             {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2}),
    "eva02": ("eva02_tiny_patch14_224",
              {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2}),
    "cait": ("cait_xxs24_224", {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3,
                                "num_heads": 2, "depth_token_only": 1}),
    "swin": ("swin_tiny_patch4_window7_224",
             {"img_size": 32, "patch_size": 4, "embed_dim": 16, "depths": (2, 2),
              "num_heads": (1, 2), "window_size": 4}),
    "swinv2": ("swinv2_tiny_window8_256",
               {"img_size": 32, "patch_size": 4, "embed_dim": 16, "depths": (2, 2),
                "num_heads": (1, 2), "window_size": 4}),
    "pit": ("pit_ti_224", {"img_size": 32, "patch_size": 4, "stride": 4, "base_dims": [16, 16],
                           "depth": [2, 2], "heads": [1, 2]}),
    "convit": ("convit_tiny", {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3,
                               "num_heads": 2, "local_up_to_layer": 2}),
    "xcit": ("xcit_nano_12_p16_224", {"img_size": 32, "patch_size": 8, "embed_dim": 32,
                                      "depth": 3, "num_heads": 2, "cls_attn_layers": 1}),
    "twins": ("twins_svt_small", {"img_size": 32, "patch_size": 4, "embed_dims": (16, 32),
                                  "num_heads": (1, 2), "mlp_ratios": (2, 2), "depths": (2, 2),
                                  "sr_ratios": (2, 1), "wss": (4, 4)}),
    "levit": ("levit_128s", {"img_size": 64, "embed_dim": (16, 32), "key_dim": 8,
                             "depth": (2, 2), "num_heads": (1, 2)}),
    "mvitv2": ("mvitv2_tiny", {"img_size": 32}),
    "resnet": ("resnet18", {}),
    "convnext": ("convnext_atto", {}),
}
"""Expected adapter family of each entry (vit_reg is a vit)."""
EXPECTED_FAMILY = {name: ("vit" if name == "vit_reg" else name) for name in FAMILIES}


def image_size(family: str) -> int:
    """Side of the square images the family's tiny model takes."""
    return 64 if family == "levit" else 32


def build(family: str, num_classes: int = 10, seed: int = 0) -> torch.nn.Module:
    """The tiny model of `family`, NormalizedModel-wrapped, eval mode, parameters re-drawn."""
    import timm

    from robustbench_vit.models.sources import NormalizedModel

    arch, kwargs = FAMILIES[family]
    torch.manual_seed(seed)
    net = timm.create_model(arch, num_classes=num_classes, **kwargs)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("logit_scale"):  # Swin-V2 keeps log-scales; leave them
                continue
            if p.dim() > 1:  # fan-in scaled, so deep stacks stay finite
                p.copy_(torch.randn_like(p) / max(p[0].numel(), 1) ** 0.5)
            else:
                p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name.endswith("weight") else 0.0))
    return NormalizedModel(net).eval()


def images(family: str, n: int = 4, seed: int = 1) -> torch.Tensor:
    """`n` random [0,1] images of the family's size."""
    gen = torch.Generator().manual_seed(seed)
    size = image_size(family)
    return torch.rand(n, 3, size, size, generator=gen)
