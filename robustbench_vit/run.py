"""Run a suite: expand cells, skip the finished ones, prepare shared inputs, hand the rest to a runner."""

from __future__ import annotations

import logging
from pathlib import Path

from .cells import Cell
from .models import split_source
from .registry import Registry
from .runners.base import NullProgress, Progress, Runner, RunSummary
from .runners.local import LocalRunner
from .store import ResultStore
from .suite import Suite

log = logging.getLogger(__name__)

RUNNERS: Registry[type] = Registry("runner backend")
RUNNERS.register("local", LocalRunner)


def prepare(cells: list[Cell]) -> None:
    """Build shared expensive inputs once, before any cell needs them (zoo checkpoints)."""
    from .evaluate import resolve_device
    from .zoo import ensure_trained

    recipes = {(split_source(c.model.source)[1], c.device) for c in cells
               if split_source(c.model.source)[0] == "zoo"}
    for name, device in sorted(recipes):
        ensure_trained(name, resolve_device(device))


def run_suite(
    suite: Suite,
    results_dir: str | Path = "results",
    *,
    device: str | None = None,
    backend: str | None = None,
    progress: Progress | None = None,
) -> RunSummary:
    """Evaluate every unfinished cell of `suite`; results are committed cell by cell."""
    cells = suite.cells(device)
    runner: Runner = RUNNERS.get(backend or suite.runner.get("backend", "local"))()
    with ResultStore(results_dir) as store:
        prepare(store.pending(cells))
        return runner.run(cells, store, progress or NullProgress())
