"""What defenses and scenarios ask of a model, answered per timm family instead of guessed.

A `FamilyAdapter` knows one family's layout: its prefix tokens and how the head reads them, its
stages of blocks (and whether their order may change), every attention module, the pixel step of
its token grid, and whether token dropping is exact. `adapter_for` picks the adapter by the timm
class of the backbone (a suite may name the family instead); a model no adapter knows gets the
`generic` adapter, which supports only what works on any image classifier.

Capabilities a family lacks raise `UnsupportedModel` with a reason that is true for that family;
a cell that meets one is stored as skipped with the reason, never computed on a guess.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from ...core.errors import UnsupportedModel
from ...core.registry import FAMILIES, Registry

Blocks = nn.Sequential | nn.ModuleList


@dataclass(frozen=True)
class Stage:
    """A sequence of encoder blocks: `getattr(owner, attr)` (a Sequential or ModuleList).

    `path` names it in messages ("blocks", "layers.1.blocks"). The owner may call the container
    or iterate it itself; either way it runs the blocks in container (iteration) order, so a
    container holding the same blocks in another order reorders execution.
    """

    path: str
    owner: nn.Module
    attr: str

    @property
    def blocks(self) -> Blocks:
        """The container (read each time: `arranged` swaps it temporarily)."""
        return getattr(self.owner, self.attr)


class FamilyAdapter:
    """Answers for one model family; subclasses override what differs from a plain ViT."""

    family: ClassVar[str] = "generic"
    timm_classes: ClassVar[tuple[str, ...]] = ()
    """Backbone class names this adapter is chosen for (the class or one of its bases)."""
    attention_classes: ClassVar[tuple[str, ...]] = ()
    """Class names of the family's attention modules (every one computes explicit logits)."""
    prefix_tokens: ClassVar[tuple[str, ...]] = ()
    """Token parameters before the patch tokens, in sequence order ("cls_token", ...)."""
    head_reads: ClassVar[str] = "pooled features"
    """How the classifier reads the tokens (documentation and the support matrix)."""
    no_attention: ClassVar[str] = ""
    """Why the family has no attention to change (non-empty for CNNs)."""

    # --- stages and blocks -----------------------------------------------------------------
    def stages(self, net: nn.Module) -> list[Stage]:
        """Every block sequence, in execution order (empty for models without blocks)."""
        return []

    def shuffle_stages(self, net: nn.Module) -> list[Stage]:
        """The stages whose blocks may run in any order (same shapes, no token inserted part-way);
        UnsupportedModel when there is none."""
        raise UnsupportedModel(f"{self.family}: {self.reorder_reason(net)}")

    def reorder_reason(self, net: nn.Module) -> str:
        """Why the blocks cannot be reordered or removed (for skip messages)."""
        return f"{type(net).__name__} has no sequence of interchangeable encoder blocks"

    def order_stage(self, net: nn.Module) -> Stage:
        """The one block sequence `layer_order` reorders and prunes; UnsupportedModel where
        reordering or removing blocks is not defined for the family."""
        raise UnsupportedModel(f"{self.family}: {self.reorder_reason(net)}")

    def feature_blocks(self, net: nn.Module) -> list[nn.Module]:
        """Blocks whose outputs are intermediate features (DTA's layers), in execution order."""
        # indexed, not iterated: a layer-shuffled container iterates in a random order in training
        return [stage.blocks[i] for stage in self.stages(net) for i in range(len(stage.blocks))]

    # --- attention -------------------------------------------------------------------------
    def attention_modules(self, net: nn.Module) -> list[nn.Module]:
        """Every attention module (all stages), in module order; UnsupportedModel without any."""
        names = set(self.attention_classes)
        found = [m for m in net.modules() if type(m).__name__ in names]
        if not found:
            reason = self.no_attention or (
                f"no attention modules known for {type(net).__name__} (family {self.family})")
            raise UnsupportedModel(f"{self.family}: {reason}")
        return found

    def token_grid(self, net: nn.Module, attn: nn.Module) -> tuple[int, tuple[int, int]]:
        """(prefix tokens, (rows, cols)) of the (B, N, C) input of attention module `attn`, for
        token-grid defenses (TAP); UnsupportedModel where the input is not such a sequence."""
        raise UnsupportedModel(f"{self.family}: attention inputs are not one fixed token grid "
                               f"with prefix tokens (TAP pools a ViT's token grid)")

    # --- tokens and patches ----------------------------------------------------------------
    def patch_size(self, net: nn.Module) -> tuple[int, int]:
        """Pixel step between neighbouring tokens of the first token grid (height, width)."""
        raise UnsupportedModel(f"{self.family}: {type(net).__name__} has no patch tokens")

    def token_dropping(self, net: nn.Module) -> str | None:
        """None when dropping fully ablated patch tokens is exact for this model, else why not."""
        return (f"{self.family}: token dropping needs absolute position embeddings added to "
                "independent patch tokens (a plain ViT patch embedding)")


class SequenceAdapter(FamilyAdapter):
    """A ViT-like family: one `blocks` sequence of interchangeable blocks (it may be reordered,
    pruned and shuffled), a patch embedding with `patch_size` and a fixed `grid_size`, and
    `num_prefix_tokens` before the patch tokens of every attention input."""

    def stages(self, net: Any) -> list[Stage]:
        return single_stage(net)

    def shuffle_stages(self, net: Any) -> list[Stage]:
        return single_stage(net)

    def order_stage(self, net: Any) -> Stage:
        return single_stage(net)[0]

    def token_grid(self, net: Any, attn: nn.Module) -> tuple[int, tuple[int, int]]:
        if getattr(net, "dynamic_img_size", False):
            return super().token_grid(net, attn)
        return int(net.num_prefix_tokens), pair(net.patch_embed.grid_size)

    def patch_size(self, net: Any) -> tuple[int, int]:
        return pair(net.patch_embed.patch_size)


class HierarchicalAdapter(FamilyAdapter):
    """Stages of same-shape blocks joined by downsampling: each stage may be shuffled on its own;
    reordering or pruning across the whole model is not defined. `stage_list` names the
    attribute holding the stages (each with a `blocks` sequence)."""

    stage_list: ClassVar[str] = "stages"
    joined_by: ClassVar[str] = "of different widths"

    def stages(self, net: Any) -> list[Stage]:
        return nested_stages(net, self.stage_list)

    def shuffle_stages(self, net: Any) -> list[Stage]:
        return self.stages(net)

    def reorder_reason(self, net: Any) -> str:
        return (f"{type(net).__name__} is hierarchical ({len(self.stages(net))} stages "
                f"{self.joined_by}): block order is defined for one sequence of same-shape blocks")


ADAPTERS: Registry[FamilyAdapter] = FAMILIES


def register_adapter(adapter: type[FamilyAdapter]) -> type[FamilyAdapter]:
    """Class decorator: register an adapter instance under its `family`."""
    ADAPTERS.register(adapter.family, adapter())
    return adapter


register_adapter(FamilyAdapter)  # `generic`: models no family adapter knows


WRAPPED = ("backbone", "model", "smoothed")
"""Attributes under which wrappers hold the model they wrap (NormalizedModel and smoothing:
`backbone`, EOTModel: `model`, the smoothing attack view: `smoothed`)."""


def _inner(model: nn.Module) -> nn.Module | None:
    for name in WRAPPED:
        inner = getattr(model, name, None)
        if isinstance(inner, nn.Module):
            return inner
    return None


def unwrap(model: nn.Module) -> nn.Module:
    """The timm network inside the wrappers (NormalizedModel, smoothing, EOT, ...)."""
    for _ in range(8):
        inner = _inner(model)
        if inner is None:
            break
        model = inner
    return model


def family_of(net: nn.Module) -> str:
    """The registered family whose `timm_classes` name the class of `net` or a base class."""
    mro = [cls.__name__ for cls in type(net).__mro__]
    for name in mro:  # most specific class first
        for family in ADAPTERS.names():
            if name in ADAPTERS.get(family).timm_classes:
                return family
    return "generic"


def adapter_for(model: nn.Module, family: str | None = None) -> tuple[FamilyAdapter, nn.Module]:
    """(adapter, timm network) for a wrapped or bare model; `family` overrides the lookup."""
    from . import families  # noqa: F401  - registers the built-in adapters

    net: nn.Module | None = model
    for _ in range(8):
        if family is not None or net is None:
            break
        family = getattr(net, "rbv_family", None)  # the suite's `family:` (set by build_model)
        net = _inner(net)
    net = unwrap(model)
    return ADAPTERS.get(family or family_of(net)), net


def single_stage(net: nn.Module, attr: str = "blocks") -> list[Stage]:
    """[Stage(attr)] for a model with one block sequence `attr`."""
    blocks = getattr(net, attr, None)
    return [Stage(attr, net, attr)] if isinstance(blocks, Blocks) else []


def nested_stages(net: nn.Module, attr: str, inner: str = "blocks") -> list[Stage]:
    """One stage per `net.<attr>[i].<inner>` (hierarchical models)."""
    return [Stage(f"{attr}.{i}.{inner}", stage, inner) for i, stage in enumerate(getattr(net, attr))
            if isinstance(getattr(stage, inner, None), Blocks)]


def pair(size: object) -> tuple[int, int]:
    """(h, w) of an int or a pair."""
    if isinstance(size, int):
        return size, size
    h, w = size  # type: ignore[misc]
    return int(h), int(w)  # type: ignore[has-type]


@contextmanager
def arranged(stage: Stage, order: list[int] | tuple[int, ...]) -> Iterator[None]:
    """Within the block, the stage runs its original blocks listed in `order` (a new container of
    the same type and modules); the original container is put back even when a forward raises."""
    original = stage.blocks
    modules = [original[i] for i in order]
    replacement = nn.Sequential(*modules) if isinstance(original, nn.Sequential) \
        else nn.ModuleList(modules)
    setattr(stage.owner, stage.attr, replacement)
    try:
        yield
    finally:
        setattr(stage.owner, stage.attr, original)


def check_same_shapes(model: nn.Module, stage: Stage, x: torch.Tensor) -> None:
    """UnsupportedModel unless every block of `stage` maps its input tokens to the same shape."""
    changed: list[str] = []

    def hook(_m: nn.Module, args: tuple, out: object) -> None:
        first = out[0] if isinstance(out, tuple) else out
        if args and isinstance(args[0], torch.Tensor) and isinstance(first, torch.Tensor) \
                and args[0].shape != first.shape:
            changed.append(f"{tuple(args[0].shape)} -> {tuple(first.shape)}")

    handles = [block.register_forward_hook(hook) for block in stage.blocks]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for h in handles:
            h.remove()
    if changed:
        raise UnsupportedModel(f"blocks of {stage.path} change the feature shape ({changed[0]}): "
                               "their order is not interchangeable")
