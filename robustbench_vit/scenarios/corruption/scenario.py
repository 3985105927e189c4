"""`corruption`: accuracy under ImageNet-C corruptions at one severity (Hendrycks & Dietterich).

One cell = one severity for every listed corruption. Rows: `corruption_accuracy` per corruption,
stored with scenario `corruption:<name>` (params hold the severity), and the clean `accuracy` of the
same slice (scenario `corruption`), which relative mCE subtracts. mCE and relative mCE are derived
from these rows by the leaderboard (the `mce` aggregate in `mce.py` beside this module), relative
to `baseline`: a model
label of the suite (its undefended rows) or a published table such as `published:alexnet`.

Corrupted images come from the shared on-disk cache (robustbench_vit.data.corruption_cache):
generated once per
(clean pixels, corruption, severity, seed) for every model and defense that sees those pixels.
Datasets that ship the corrupted files (`imagenet_c`) are read instead, and default the baseline to
their published table.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch.utils.data import DataLoader, Dataset, Subset

from ...core.metrics import Measurement, proportion, register_metric
from ...core.params import ParamError
from ...core.registry import CORRUPTIONS, SCENARIOS
from ...data.corruption_cache import cached_corruptions, to_uint8
from ...data.corruptions import ALL, BENCHMARK
from ...data.datasets import ProvidesCorruptions, dataset_len
from ...data.published import is_published, table_names
from ..base import CellContext, Scenario

log = logging.getLogger(__name__)

NAME_SETS: dict[str, tuple[str, ...]] = {"all": ALL, "benchmark": BENCHMARK}
"""`names:` shorthands: the 19 ImageNet-C corruptions, or the 15 of mCE."""
Counts = tuple[int, int]  # (correct, evaluated)


register_metric("corruption_accuracy", higher_is_better=True, headline=True,
                description="Top-1 accuracy on corrupted inputs")
register_metric("mce", higher_is_better=False, proportion=False, headline=True,
                description="Mean corruption error x100, relative to a baseline model")
register_metric("relative_mce", higher_is_better=False, proportion=False,
                description="Relative mean corruption error x100 (clean error subtracted)")


@SCENARIOS.register("corruption")
@dataclass(frozen=True, kw_only=True)
class CorruptionScenario(Scenario):
    """Accuracy under ImageNet-C corruptions at one severity; mCE derived by the leaderboard."""

    kind: ClassVar[str] = "corruption"
    chunkable: ClassVar[bool] = True
    execution_fields: ClassVar[frozenset[str]] = frozenset({"workers", "cache"})
    """Chunks corrupt their images with the whole slice's per-image seeds and sum their counts."""
    names: Literal["all", "benchmark"] | list[str] = "all"
    severity: Annotated[int, Field(ge=1, le=5)] = 3  # sweep 1..5 for the standard mCE
    baseline: str | None = None
    workers: Annotated[int, Field(ge=0)] = 0
    cache: bool = True

    def check(self) -> None:
        if isinstance(self.names, list):
            if not self.names:
                raise ParamError("names", "list at least one corruption, or use all / benchmark")
            for i, name in enumerate(self.names):
                if name not in CORRUPTIONS:
                    close = CORRUPTIONS.suggest(name)
                    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
                    raise ParamError(f"names[{i}]", f"unknown corruption {name!r}{hint} "
                                                    "(see `rbv ls corruptions`)")
        if is_published(self.baseline) and self.baseline not in table_names():
            raise ParamError("baseline", f"no published table {self.baseline!r} "
                                         f"(known: {', '.join(table_names())})")

    def corruption_names(self) -> list[str]:
        """The corruptions this cell evaluates, without duplicates, in the order given."""
        names = NAME_SETS[self.names] if isinstance(self.names, str) else self.names
        return list(dict.fromkeys(names))

    def run(self, ctx: CellContext) -> list[Measurement]:
        return self.merge([self.partial(ctx)])

    def partial(self, ctx: CellContext) -> dict[str, Any]:
        """Correct/total counts, clean and per corruption, over the images of `ctx.loader`."""
        names = self.corruption_names()
        found = precomputed_source(ctx.loader.dataset)
        # passes over the data: clean, then per corruption generating (unless precomputed), counting
        passes = len(names) + 1 if found is not None else 2 * len(names) + 1
        progress = Share(ctx.advance, total=dataset_len(ctx.loader.dataset), passes=passes)
        clean: Counts | None
        if found is None:
            clean, corrupted = self.generated(ctx, names, progress)
            baseline = self.baseline
        else:
            clean, corrupted = self.precomputed(ctx, names, *found, progress)
            baseline = self.baseline or found[0].published_baseline
        return {"clean": clean, "corrupted": corrupted, "baseline": baseline}

    def merge(self, parts: list[dict[str, Any]]) -> list[Measurement]:
        """Rows from the summed counts of consecutive chunks (one part for a whole cell)."""
        baseline = parts[0]["baseline"]
        extra = {"baseline": baseline} if baseline != self.baseline else {}
        cleans = [p["clean"] for p in parts]
        rows = []
        if all(c is not None for c in cleans):
            rows.append(proportion("accuracy", *_summed(cleans), **extra))
        rows += [replace(proportion("corruption_accuracy",
                                    *_summed([p["corrupted"][name] for p in parts]), **extra),
                         scenario_name=name) for name in parts[0]["corrupted"]]
        return rows

    def generated(self, ctx: CellContext, names: list[str],
                  progress: Share) -> tuple[Counts, dict[str, Counts]]:
        """Clean counts, and counts per corruption on cached (or freshly made) corrupted copies."""
        images, labels, correct = [], [], 0
        for x, y in ctx.loader:
            correct += count_correct(ctx, x, y)
            images.append(to_uint8(x))
            labels.append(y)
        progress.pass_done()
        pixels = np.concatenate(images) if images else np.zeros((0, 1, 1, 3), np.uint8)
        y_all = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
        start = ctx.first_batch * (ctx.loader.batch_size or 1)  # chunks: seeds of the whole slice
        per_image = 1 / max(1, len(pixels))
        arrays = cached_corruptions(pixels, names, self.severity, ctx.seed,
                                    workers=self.workers, cache=self.cache, start=start,
                                    progress=lambda n: progress.add(n * per_image))
        progress.until(1 + len(names))  # cached entries: generation passes done at once
        corrupted = {}
        for name in names:
            corrupted[name] = (count_correct_batches(ctx, array_batches(
                arrays[name], y_all, ctx.loader.batch_size or 100)), len(y_all))
            progress.pass_done()
        return (correct, len(y_all)), corrupted

    def precomputed(self, ctx: CellContext, names: list[str], source: ProvidesCorruptions,
                    indices: list[int], progress: Share) -> tuple[Counts | None, dict[str, Counts]]:
        """Counts on the dataset's own corrupted files (ImageNet-C); clean when it has them."""
        batch_size = ctx.loader.batch_size or 100

        def counts(dataset: Dataset) -> Counts:
            loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False)
            result = (count_correct_batches(ctx, loader), len(indices))
            progress.pass_done()
            return result

        clean_set = source.clean()
        clean = counts(clean_set) if clean_set is not None else None
        if clean is None:
            log.info("no clean images beside the corrupted files: no clean accuracy row")
            progress.pass_done()
        return clean, {name: counts(source.corrupted(name, self.severity)) for name in names}


def _summed(counts: list[Counts]) -> Counts:
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def precomputed_source(dataset: Any) -> tuple[ProvidesCorruptions, list[int]] | None:
    """(the dataset under any Subsets, the slice's indices in it) when it ships corrupted files."""
    indices: list[int] | None = None
    while isinstance(dataset, Subset):
        inner = list(dataset.indices)
        indices = inner if indices is None else [inner[i] for i in indices]
        dataset = dataset.dataset
    if not isinstance(dataset, ProvidesCorruptions):
        return None
    return dataset, indices if indices is not None else list(range(dataset_len(dataset)))


def array_batches(images: np.ndarray, labels: torch.Tensor,
                  batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """([0,1] float (B,3,H,W), labels) batches of a uint8 (N,H,W,3) array."""
    for i in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.array(images[i:i + batch_size]))  # a writable copy
        yield chunk.permute(0, 3, 1, 2).float().div_(255), labels[i:i + batch_size]


@torch.no_grad()
def count_correct(ctx: CellContext, x: torch.Tensor, y: torch.Tensor) -> int:
    """Top-1 hits of the cell's model on one batch."""
    x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
    with ctx.autocast():
        return int((ctx.model(x).argmax(1) == y).sum())


def count_correct_batches(ctx: CellContext,
                          batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> int:
    """Top-1 hits over (images, labels) batches."""
    return sum(count_correct(ctx, x, y) for x, y in batches)


class Share:
    """Reports `total` progress units spread evenly over `passes` passes of the data."""

    def __init__(self, advance: Callable[[int], None], total: int, passes: int):
        self.advance, self.total, self.passes = advance, total, max(1, passes)
        self.done = 0.0
        self.reported = 0

    def add(self, passes: float) -> None:
        """`passes` (a fraction, e.g. one image's share) more done: advance to its share."""
        self.done = min(self.done + passes, float(self.passes))
        target = int(self.total * self.done / self.passes + 1e-9)
        if target > self.reported:
            self.advance(target - self.reported)
            self.reported = target

    def pass_done(self) -> None:
        """One pass finished."""
        self.add(1)

    def until(self, passes: int) -> None:
        """At least `passes` passes done (skipped work counts as done)."""
        if self.done < passes:
            self.add(passes - self.done)
