"""The scenario contract and the context a cell hands to it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..core.cells import ModelConfig
from ..core.errors import ScenarioNotApplicable
from ..core.metrics import Measurement
from ..core.outcomes import ExampleBits
from ..core.params import to_plain, validate_params, without_unkeyed


@dataclass(kw_only=True)
class CellContext:
    """What a scenario may use: the defended model, the data, the device, the seed, progress."""

    model: nn.Module
    loader: DataLoader
    device: torch.device
    seed: int
    num_classes: int
    defense_differentiable: bool = True
    amp: bool = False
    advance: Callable[[int], None] = lambda n: None
    model_config: ModelConfig | None = None
    references: dict[str, ModelConfig] = field(default_factory=dict)
    load_model: Callable[[ModelConfig], nn.Module] | None = None
    heldout: Callable[[int], tuple[torch.Tensor, torch.Tensor]] | None = None
    data_key: str = ""
    model_key: str = ""
    defense: Any = None
    """The cell's defense object (scenarios such as `certify` need its parameters)."""
    attack_model: nn.Module | None = None
    """A differentiable view for gradient attacks when the defended model is not (set by
    defenses)."""
    first_batch: int = 0
    """Index, in the whole cell, of the loader's first batch (non-zero for a chunk of a cell)."""

    def reference(self, name: str) -> nn.Module:
        """The model a scenario field refers to (e.g. a DTA source), loaded, frozen, in eval
        mode."""
        if self.load_model is None or name not in self.references:
            raise ValueError(f"this cell has no model reference {name!r}")
        model = self.load_model(self.references[name])
        for p in model.parameters():
            p.requires_grad_(False)
        return model.eval()

    def heldout_batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` images of the cell's dataset outside the evaluated slice (for selection steps)."""
        if self.heldout is None:
            raise ValueError("this cell has no held-out data")
        x, y = self.heldout(n)
        return x.to(self.device), y.to(self.device)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) on the device; reports one unit of progress per image."""
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            self.advance(len(y))

    def outcomes(self, bits: torch.Tensor) -> str:
        """Encoded per-example outcomes (`core.outcomes`) of the images of `ctx.loader`, in
        order: positions from the chunk's first image in the cell's slice."""
        start = self.first_batch * (self.loader.batch_size or 1)
        return ExampleBits(data=self.data_key, start=start,
                           bits=bits.detach().cpu().bool().numpy()).encode()

    def autocast(self) -> Any:
        """Mixed precision for forward-only scenarios when the suite asks for it."""
        enabled = self.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, enabled=enabled)


@dataclass(frozen=True, kw_only=True)
class PlanContext:
    """What the plan knows of a cell before it runs: the defended model's structure (on the meta
    device: no weights), the model's config and references, and the defense object."""

    model: nn.Module
    model_config: ModelConfig | None = None
    references: dict[str, ModelConfig] = field(default_factory=dict)
    defense: Any = None
    defense_differentiable: bool = True


CHUNK_PIXELS = 2**20
"""Images x pixels per forward of scenarios that evaluate many perturbed copies of a batch
(occlusion, fourier), at most: a memory bound (20 copies at 224 px, 1,024 at 32 px, as the patch
attack's chunks), not a result knob."""


def chunked_predictions(ctx: CellContext, count: int, pixels: int,
                        build: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
    """Top-1 predictions (on the CPU) of `count` images that `build(start, stop)` makes chunk by
    chunk, each chunk at most CHUNK_PIXELS pixels (`pixels` per image)."""
    per = max(1, CHUNK_PIXELS // max(1, pixels))
    out = [torch.zeros(0, dtype=torch.long)]
    for start in range(0, count, per):
        with ctx.autocast():
            out.append(ctx.model(build(start, min(start + per, count))).argmax(1).cpu())
    return torch.cat(out)


def joined_outcomes(parts: list[str]) -> str:
    """The encoded outcomes of consecutive chunks as one (see `CellContext.outcomes`)."""
    return ExampleBits.concat([ExampleBits.decode(p) for p in parts]).encode()


def skip_reason(check: Callable[[], object]) -> str | None:
    """The message of the ScenarioNotApplicable `check()` raises, or None when it passes."""
    try:
        check()
    except ScenarioNotApplicable as exc:
        return str(exc)
    return None


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """Base of scenarios: fields are YAML keys; `run` returns the cell's measurements."""

    kind: ClassVar[str]
    needs_gradients: ClassVar[bool] = False
    execution_fields: ClassVar[frozenset[str]] = frozenset()
    """Fields that change how a cell runs (processes, caching), never its numbers: they stay out of
    the cell key and the stored params, so changing them neither recomputes nor relabels results."""
    unkeyed_defaults: ClassVar[dict[str, Any]] = {}
    """Fields added after results were stored, with their defaults: at that default a field stays
    out of the stored params and the cell key (`to_params`), so existing suites keep their keys."""
    detail_params: ClassVar[frozenset[str]] = frozenset()
    """Params that mark per-draw rows (one per random permutation...): kept in the long table,
    left out of the headline pivot, where the scenario's aggregates summarize them."""
    chunkable: ClassVar[bool] = False
    """True when `merge` of `partial`s over batch-aligned slices gives exactly `run`'s rows.

    A chunkable scenario draws its randomness per batch from `ctx.seed` and the batch's index in
    the whole cell (`ctx.first_batch + i`), never from state carried over from earlier batches.
    """

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Scenario:
        """Validate YAML parameters into a scenario (pydantic errors carry field locations)."""
        return validate_params(cls, params)

    def to_params(self) -> dict[str, Any]:
        """Plain parameters (fields at their `unkeyed_defaults` left out):
        `from_params(to_params())` rebuilds the scenario."""
        return without_unkeyed(to_plain(self), self.unkeyed_defaults)

    def unsupported(self, ctx: PlanContext) -> str | None:
        """Why this scenario will be skipped for the cell `ctx` describes, or None. The plan asks
        before anything runs: a scenario that skips for a reason known without data (a model
        family, the defense, the references) says so here, with the same message as the cell."""
        return None

    def run(self, ctx: CellContext) -> list[Measurement]:
        """Evaluate and return measurements."""
        raise NotImplementedError

    def partial(self, ctx: CellContext) -> Any:
        """Sufficient statistics of the images in `ctx.loader` (chunkable scenarios only)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be split into chunks")

    def merge(self, parts: list[Any]) -> list[Measurement]:
        """Measurements from the `partial`s of consecutive chunks, in image order."""
        raise NotImplementedError(f"{type(self).__name__} cannot be split into chunks")
