"""Introspection of ViT-family backbones: token grid, encoder blocks, intermediate features."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..core.errors import ScenarioNotApplicable


def backbone_of(model: nn.Module) -> nn.Module:
    """The innermost module that has `blocks` (a timm VisionTransformer-family backbone)."""
    for module in model.modules():
        if isinstance(getattr(module, "blocks", None), nn.Sequential | nn.ModuleList):
            return module
    raise ScenarioNotApplicable(
        f"{type(model).__name__} has no `blocks` sequence: this scenario needs a ViT-family model")


def blocks_of(backbone: nn.Module) -> nn.Sequential | nn.ModuleList:
    """`backbone.blocks`, the encoder blocks of a backbone that `backbone_of` returns."""
    blocks = getattr(backbone, "blocks", None)
    if not isinstance(blocks, nn.Sequential | nn.ModuleList):
        raise ScenarioNotApplicable(f"{type(backbone).__name__} has no `blocks` sequence")
    return blocks


def patch_size(model: nn.Module) -> tuple[int, int]:
    """The (height, width) of one token's pixel patch."""
    embed = getattr(backbone_of(model), "patch_embed", None)
    size = getattr(embed, "patch_size", None)
    if size is None:
        raise ScenarioNotApplicable(f"{type(model).__name__} has no patch_embed.patch_size")
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def num_blocks(model: nn.Module) -> int:
    """Number of encoder blocks."""
    return len(blocks_of(backbone_of(model)))


@contextmanager
def capture_block_outputs(model: nn.Module, layers: list[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Within the block, forward passes fill {layer: output tokens of block `layer`} (with
    gradients)."""
    blocks = blocks_of(backbone_of(model))
    store: dict[int, torch.Tensor] = {}
    handles = []
    for layer in layers:
        if not -len(blocks) <= layer < len(blocks):
            raise ValueError(f"layer {layer} out of range: the model has {len(blocks)} blocks")
        index = layer % len(blocks)

        def hook(_m: nn.Module, _i: object, out: torch.Tensor, index: int = index) -> None:
            store[index] = out

        handles.append(blocks[index].register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()
