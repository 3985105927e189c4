"""LayerShuffle (Freiberger et al. 2024): encoder blocks trained in random orders.

Every stage the family adapter lists in `shuffle_stages` (a ViT's `blocks`, each stage of Swin, PiT,
LeViT and Twins, the self-attention blocks of CaiT and XCiT, ...) gets a container of the same kind
(`ShuffledBlocks`, an nn.Sequential, or `ShuffledModuleList`) holding the same block modules under
the same names, so state-dict keys do not change. Its iteration order is the execution order,
whether the owner calls the container (nn.Sequential.forward iterates it) or iterates it itself
(`for blk in self.blocks`): in training mode every iteration yields the blocks in a fresh random
permutation shared by the batch; in eval mode it yields them in container order, so the
`layer_order` scenario can reorder them. Families without such stages (ConViT, MViTv2, CNNs) are
unsupported, with the adapter's reason.

With `slot_embedding` (plain timm VisionTransformer only: it needs `norm_pre` run once just before
the blocks), a 32-d zero-initialized embedding of the execution slot is concatenated to the tokens,
then LayerNorm -> Linear -> GELU, added residually before each block. The module lives on the
backbone (`backbone.slot_embed`), outside the container, and is applied by forward pre-hooks on the
block modules with a position counter that `backbone.norm_pre` resets at the start of every encoder
pass: slot k is the k-th block *executed*, whatever container runs them. So `layer_order`, which
swaps `backbone.blocks` for a reordered nn.Sequential of the same block objects, still gets the
embedding of each execution position, and so does pruning.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from robustbench_vit.api import Defense, Stage, UnsupportedModel, adapter_for, register_defense

SLOT_DIM = 32
EOT_SAMPLES = 16
"""Random block orders a gradient attack averages per step under `eval_order: random`."""


def _execution_order(container: nn.Module) -> Iterator[nn.Module]:
    """The container's modules: a fresh random permutation in training mode (and in eval mode
    when the container's `random_eval` is set), else in order."""
    modules = [m for m in container._modules.values() if m is not None]
    if not container.training and not getattr(container, "random_eval", False):
        return iter(modules)
    return iter([modules[i] for i in torch.randperm(len(modules)).tolist()])


class ShuffledBlocks(nn.Sequential):
    """An nn.Sequential of blocks iterated (and so run) in a random order in training mode."""

    def __iter__(self) -> Iterator[nn.Module]:
        return _execution_order(self)


class ShuffledModuleList(nn.ModuleList):
    """An nn.ModuleList of blocks iterated in a random order in training mode (for owners that
    loop over their blocks themselves)."""

    def __iter__(self) -> Iterator[nn.Module]:
        return _execution_order(self)


def shuffled_container(stage: Stage) -> nn.Module:
    """A shuffled container of the stage's kind holding its modules under the same names."""
    original = stage.blocks
    modules: OrderedDict[str, nn.Module] = OrderedDict(
        (name, module) for name, module in original._modules.items() if module is not None)
    if type(original) is nn.Sequential:
        return ShuffledBlocks(modules)
    if type(original) is nn.ModuleList and list(modules) == [str(i) for i in range(len(modules))]:
        return ShuffledModuleList(modules.values())
    raise UnsupportedModel(f"layer_shuffle: {stage.path} is a {type(original).__name__}, not a "
                           "plain nn.Sequential or nn.ModuleList: its iteration cannot be shuffled "
                           "without losing its own behaviour")


def shuffle_stages(model: nn.Module) -> list[Stage]:
    """Replace the container of every stage the adapter allows shuffling, in place; the stages.

    UnsupportedModel (the adapter's reason) when the family has none.
    """
    adapter, net = adapter_for(model)
    stages = adapter.shuffle_stages(net)
    replacements = [(stage, shuffled_container(stage)) for stage in stages]  # check all first
    for stage, container in replacements:
        setattr(stage.owner, stage.attr, container)
    return stages


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


def slot_embedding_backbone(model: nn.Module) -> nn.Module:
    """The timm VisionTransformer the slot embedding attaches to; UnsupportedModel otherwise."""
    from timm.models.vision_transformer import VisionTransformer

    _, net = adapter_for(model)
    if not isinstance(net, VisionTransformer) or not isinstance(
            getattr(net, "norm_pre", None), nn.Module):
        raise UnsupportedModel(
            f"layer_shuffle slot_embedding needs a timm VisionTransformer (norm_pre run once just "
            f"before one `blocks` sequence resets the slot counter), got {type(net).__name__}")
    return net


def add_slot_embedding(backbone: Any) -> None:
    """Attach the execution-slot embedding to a VisionTransformer whose blocks are shuffled."""
    blocks = backbone.blocks
    dim = int(getattr(backbone, "embed_dim", None) or backbone.num_features)
    device = next(backbone.parameters()).device
    backbone.slot_embed = SlotEmbedding(len(blocks), dim).to(device)
    backbone.norm_pre.register_forward_pre_hook(backbone.slot_embed.reset)
    for i in range(len(blocks)):
        blocks[i].register_forward_pre_hook(backbone.slot_embed.before_block)


def make_layer_shuffle(model: nn.Module, slot_embedding: bool) -> list[Stage]:
    """Edit a model in place: shuffled stages, optionally the execution-slot embedding (checked
    before anything changes); the shuffled stages."""
    backbone = slot_embedding_backbone(model) if slot_embedding else None
    stages = shuffle_stages(model)
    if backbone is not None:
        add_slot_embedding(backbone)
    return stages


@register_defense("layer_shuffle")
@dataclass(frozen=True, kw_only=True)
class LayerShuffle(Defense):
    """LayerShuffle: fine-tune with blocks in random orders, robust to block reordering/pruning."""

    stage: ClassVar[Literal["inference", "training"]] = "training"
    epochs: Annotated[int, Field(ge=1)] = 15
    lr: Annotated[float, Field(gt=0)] = 1e-3
    slot_embedding: bool = False
    eval_order: Literal["fixed", "random"] = "fixed"
    """"random": every evaluation forward runs the blocks in a fresh random order (the paper's
    random-order test); a randomized model, so gradient attacks average EOT_SAMPLES orders."""

    def apply(self, model: nn.Module) -> nn.Module:
        for stage in make_layer_shuffle(model, self.slot_embedding):
            stage.blocks.random_eval = self.eval_order == "random"
        return model

    def eot_samples(self) -> int:
        return EOT_SAMPLES if self.eval_order == "random" else 1

    def training_settings(self) -> dict[str, object]:
        settings = super().training_settings()
        settings.pop("eval_order", None)  # the same fine-tuned weights serve both orders
        return settings
