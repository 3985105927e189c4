"""Introspection of transformer backbones through the family adapters: network, blocks, token
grid step, intermediate features (see robustbench_vit.models.adapters)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..core.errors import UnsupportedModel
from .adapters import adapter_for


def _with_blocks(model: nn.Module) -> tuple[nn.Module, list[nn.Module]]:
    """(timm network, its feature blocks); UnsupportedModel when the family has none (CNNs)."""
    adapter, net = adapter_for(model)
    blocks = adapter.feature_blocks(net)
    if not blocks:
        raise UnsupportedModel(f"{adapter.family}: {type(net).__name__} has no encoder blocks: "
                               "this needs a transformer-family model")
    return net, blocks


def backbone_of(model: nn.Module) -> nn.Module:
    """The timm network inside a (wrapped) model; UnsupportedModel when its family has no
    encoder blocks (CNNs)."""
    return _with_blocks(model)[0]


def feature_blocks(model: nn.Module) -> list[nn.Module]:
    """The encoder blocks whose outputs are intermediate features, in execution order (every
    stage); UnsupportedModel for models without blocks."""
    return _with_blocks(model)[1]


def patch_size(model: nn.Module) -> tuple[int, int]:
    """The pixel step (height, width) between neighbouring tokens of the first token grid;
    UnsupportedModel for models without patch tokens."""
    adapter, net = adapter_for(model)
    return adapter.patch_size(net)


def num_blocks(model: nn.Module) -> int:
    """Number of encoder blocks (all stages)."""
    return len(feature_blocks(model))


def _first_tensor(out: object) -> torch.Tensor:
    """A block's output tokens: the output, or the first element of a tuple output (MViTv2
    blocks return (tokens, feature size))."""
    return out[0] if isinstance(out, tuple) else out  # type: ignore[return-value]


@contextmanager
def capture_block_outputs(model: nn.Module, layers: list[int]) -> Iterator[dict[int, torch.Tensor]]:
    """Within the block, forward passes fill {layer: output tokens of block `layer`} (with
    gradients); layers index `feature_blocks(model)` (negative from the end)."""
    blocks = feature_blocks(model)
    store: dict[int, torch.Tensor] = {}
    handles = []
    for layer in layers:
        if not -len(blocks) <= layer < len(blocks):
            raise ValueError(f"layer {layer} out of range: the model has {len(blocks)} blocks")
        index = layer % len(blocks)

        def hook(_m: nn.Module, _i: object, out: object, index: int = index) -> None:
            store[index] = _first_tensor(out)

        handles.append(blocks[index].register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()
