"""Fine-tuning schemes for zoo recipes built on another recipe: full, linear probe, LoRA, last
blocks.

Each scheme prepares a backbone (freezes, adds adapters) before training and finalizes it after
(LoRA merges its adapters), so every checkpoint is a plain state dict of the timm architecture.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..core.registry import Registry
from .vit import backbone_of, feature_blocks

SCHEMES: Registry[Callable[..., None]] = Registry("fine-tuning scheme")


def _head(model: nn.Module) -> nn.Module:
    head = getattr(backbone_of(model), "head", None)
    if not isinstance(head, nn.Module):
        raise ValueError("fine-tuning needs a backbone with a `head` classifier")
    return head


def _freeze_all_but(model: nn.Module, keep: list[nn.Module]) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    for module in keep:
        for p in module.parameters():
            p.requires_grad_(True)


@SCHEMES.register("full")
def prepare_full(model: nn.Module, **_: int) -> None:
    """Full fine-tuning: every weight trains."""
    for p in model.parameters():
        p.requires_grad_(True)


@SCHEMES.register("linear")
def prepare_linear(model: nn.Module, **_: int) -> None:
    """Linear probe: only the (new) classification head trains."""
    _freeze_all_but(model, [_head(model)])


@SCHEMES.register("last_blocks")
def prepare_last_blocks(model: nn.Module, last_blocks: int = 1, **_: int) -> None:
    """Parameter-efficient: the last `last_blocks` encoder blocks (the adapter's feature blocks,
    in execution order), the final norm and the head train."""
    backbone = backbone_of(model)
    keep = [*feature_blocks(model)[-last_blocks:], _head(model)]
    norm = getattr(backbone, "norm", None)
    if isinstance(norm, nn.Module):
        keep.append(norm)
    _freeze_all_but(model, keep)


class LoRALinear(nn.Module):
    """y = W x + (alpha / r) · B A x with W frozen, A Kaiming-initialized, B zero
    (LoRA, Hu et al. 2021).

    `weight` and `bias` read like a Linear's (the merged weight, with gradients to A and B), for
    modules whose forward uses them directly (BEiT, EVA, Swin-V2 attention:
    `F.linear(x, self.qkv.weight, qkv_bias)`).
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    @property
    def weight(self) -> torch.Tensor:
        """W + (alpha / r) · B A."""
        return self.base.weight + self.scale * self.lora_b @ self.lora_a

    @property
    def bias(self) -> torch.Tensor | None:
        """The frozen base bias."""
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale

    def merged(self) -> nn.Linear:
        """A plain Linear with the adapter folded into its weight."""
        merged = nn.Linear(self.base.in_features, self.base.out_features,
                           bias=self.base.bias is not None)
        with torch.no_grad():
            merged.weight.copy_(self.weight)
            if self.base.bias is not None:
                merged.bias.copy_(self.base.bias)
        return merged


@SCHEMES.register("lora")
def prepare_lora(model: nn.Module, lora_rank: int = 4, **_: int) -> None:
    """LoRA: low-rank adapters on every Linear inside the encoder blocks; adapters and head
    train."""
    _freeze_all_but(model, [_head(model)])
    for block in feature_blocks(model):
        for parent in list(block.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, LoRALinear(child, lora_rank, alpha=float(lora_rank)))


def finalize(model: nn.Module) -> None:
    """Merge LoRA adapters into plain Linear layers (no-op for other schemes)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged())
    for p in model.parameters():
        p.requires_grad_(True)
