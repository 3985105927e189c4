"""Run a suite: expand cells, skip the finished ones, prepare shared inputs, hand the rest to a
runner."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..config.devices import check_device, runs_here
from ..config.suite import Suite
from ..core.cells import Cell, canonical_json
from ..core.registry import Registry
from ..models.sources import split_source
from ..results.store import ResultStore
from .runners.base import NullProgress, Progress, Runner, RunSummary
from .runners.local import LocalRunner

log = logging.getLogger(__name__)

RUNNERS: Registry[type] = Registry("runner backend")
"""Runner classes by backend name; each is built with the suite's `runner:` section."""
RUNNERS.register("local", LocalRunner)
# imports ray lazily
RUNNERS.register_lazy("ray", "robustbench_vit.execution.runners.ray:RayRunner")


def prepare(cells: list[Cell]) -> None:
    """Build shared expensive inputs once, before any cell needs them: zoo checkpoints (of the
    cells' models and of the models their scenarios refer to), and the models fine-tuned with
    training defenses (zoo models, and models with `finetune:`)."""
    from ..core.params import validate_params
    from ..core.registry import DEFENSES
    from ..models.defended import ensure_defended
    from ..models.zoo import ensure_trained
    from .evaluate import resolve_device

    recipes = {(split_source(m.source)[1], c.device) for c in cells
               for m in (c.model, *c.references.values()) if split_source(m.source)[0] == "zoo"}
    for name, device in sorted(recipes):
        ensure_trained(name, resolve_device(device))
    seen: set[str] = set()
    for cell in cells:
        key = canonical_json([cell.model.source, cell.model.fingerprint, cell.model.finetune,
                              cell.defense, cell.defense_params, cell.device])
        trainable = split_source(cell.model.source)[0] == "zoo" or cell.model.finetune is not None
        if key in seen or not trainable:
            continue
        seen.add(key)
        defense = validate_params(DEFENSES.get(cell.defense), cell.defense_params)
        if defense.needs_training():
            ensure_defended(cell.model, defense, resolve_device(cell.device))


def run_suite(
    suite: Suite,
    results_dir: str | Path = "results",
    *,
    device: str | None = None,
    backend: str | None = None,
    runner_options: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> RunSummary:
    """Evaluate every unfinished cell of `suite`; results are committed cell by cell.

    `runner_options` override fields of the suite's `runner:` section (None values are ignored).
    A device this machine lacks (`device`, else the suite's) is refused before anything runs
    with the local backend; prepared zoo models are trained on it here with any backend.
    """
    if runs_here(suite, backend):
        check_device(suite, device)
    cells = suite.cells(device)
    options = {**suite.runner, **{k: v for k, v in (runner_options or {}).items() if v is not None}}
    runner: Runner = RUNNERS.get(backend or options.get("backend", "local"))(options)
    with ResultStore(results_dir) as store:
        prepare(store.pending(cells))
        return runner.run(cells, store, progress or NullProgress())
