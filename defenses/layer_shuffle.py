"""LayerShuffle (Freiberger et al. 2024): encoder blocks trained in random orders.

`backbone.blocks` becomes a `ShuffledBlocks` (an nn.Sequential of the same block modules): in
training mode every forward runs the blocks in a fresh random permutation shared by the batch; in
eval mode it runs them in container order, so the `layer_order` scenario can reorder them.

With `slot_embedding`, a 32-d zero-initialized embedding of the execution slot is concatenated to
the tokens, then LayerNorm -> Linear -> GELU, added residually before each block. The module lives
on the backbone (`backbone.slot_embed`), outside the container, and is applied by forward
pre-hooks on the block modules with a position counter that `backbone.norm_pre` resets at the
start of every encoder pass: slot k is the k-th block *executed*, whatever container runs them.
So `layer_order`, which swaps `backbone.blocks` for a reordered nn.Sequential of the same block
objects, still gets the embedding of each execution position, and so does pruning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from robustbench_vit.api import Defense, backbone_of, register_defense

SLOT_DIM = 32


class ShuffledBlocks(nn.Sequential):
    """Encoder blocks: a fresh random order per training forward, container order in eval."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not self.training:
            return super().forward(x)
        for i in torch.randperm(len(self)).tolist():
            x = self[i](x)
        return x


class SlotEmbedding(nn.Module):
    """Residual embedding of the execution slot: x + GELU(Linear(LayerNorm([x, e_slot])))."""

    def __init__(self, num_slots: int, dim: int, slot_dim: int = SLOT_DIM) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.zeros(num_slots, slot_dim))
        self.norm = nn.LayerNorm(dim + slot_dim)
        self.proj = nn.Linear(dim + slot_dim, dim)
        self.act = nn.GELU()
        self.position = 0

    def forward(self, x: torch.Tensor, slot: int) -> torch.Tensor:
        e = self.embedding[slot % len(self.embedding)].expand(*x.shape[:-1], -1)
        return x + self.act(self.proj(self.norm(torch.cat([x, e.to(x.dtype)], dim=-1))))

    def reset(self, *_: Any) -> None:
        """Forward pre-hook of the module run just before the blocks: the next block is slot 0."""
        self.position = 0

    def before_block(self, _block: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """Forward pre-hook of every block: embed the current execution slot, then advance it."""
        slot, self.position = self.position, self.position + 1
        return (self(args[0], slot), *args[1:])


def make_layer_shuffle(backbone: nn.Module, slot_embedding: bool) -> nn.Module:
    """Edit a ViT backbone in place: shuffled blocks, optionally the execution-slot embedding."""
    blocks = backbone.blocks
    backbone.blocks = ShuffledBlocks(*blocks)
    if slot_embedding:
        norm_pre = getattr(backbone, "norm_pre", None)
        dim = getattr(backbone, "embed_dim", None) or getattr(backbone, "num_features", None)
        if not isinstance(norm_pre, nn.Module) or not dim:
            raise ValueError("layer_shuffle slot_embedding needs a timm VisionTransformer "
                             "(norm_pre before the blocks, embed_dim)")
        device = next(backbone.parameters()).device
        backbone.slot_embed = SlotEmbedding(len(blocks), int(dim)).to(device)
        norm_pre.register_forward_pre_hook(backbone.slot_embed.reset)
        for block in backbone.blocks:
            block.register_forward_pre_hook(backbone.slot_embed.before_block)
    return backbone


@register_defense("layer_shuffle")
@dataclass(frozen=True, kw_only=True)
class LayerShuffle(Defense):
    """LayerShuffle: fine-tune with blocks in random orders, robust to block reordering/pruning."""

    stage: ClassVar[Literal["inference", "training"]] = "training"
    epochs: Annotated[int, Field(ge=1)] = 15
    lr: Annotated[float, Field(gt=0)] = 1e-3
    slot_embedding: bool = False

    def apply(self, model: nn.Module) -> nn.Module:
        try:
            backbone = backbone_of(model)
        except Exception as exc:  # ScenarioNotApplicable: no `blocks` sequence
            raise ValueError(f"layer_shuffle needs a ViT with a `blocks` sequence: {exc}") from exc
        make_layer_shuffle(backbone, self.slot_embedding)
        return model
