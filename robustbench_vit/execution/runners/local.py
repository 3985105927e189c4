"""In-process sequential runner."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ...core.cells import Cell
from ...results.store import ResultStore
from ..evaluate import cell_size, evaluate_cell
from .base import Progress, RunSummary


class LocalRunner:
    """Evaluates cells one after another in this process; commits each before the next starts."""

    def __init__(self, options: Mapping[str, Any] | None = None):
        self.options = dict(options or {})  # nothing to configure; accepted like every runner

    def run(self, cells: list[Cell], store: ResultStore, progress: Progress) -> RunSummary:
        start = time.perf_counter()
        pending = store.pending(cells)
        summary = RunSummary(total=len(cells), already_done=len(cells) - len(pending))
        progress.run_started(len(pending), summary.already_done)
        for cell in pending:
            progress.cell_started(cell, cell_size(cell))
            result = evaluate_cell(cell, progress.cell_advanced)
            store.commit(cell, result)
            summary.record(cell, result)
            progress.cell_finished(cell, result)
        summary.seconds = time.perf_counter() - start
        return summary
