"""In-process sequential runner."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ...core.cells import Cell
from ...results.store import ResultStore
from ..claims import CellQueue
from ..evaluate import cell_size, evaluate_cell
from .base import Progress, RunSummary, report_elsewhere


class LocalRunner:
    """Evaluates cells one after another in this process; commits each before the next starts."""

    def __init__(self, options: Mapping[str, Any] | None = None):
        self.options = dict(options or {})
        self.lease_seconds = float(self.options.get("lease_seconds") or 60.0)

    def run(self, cells: list[Cell], store: ResultStore, progress: Progress) -> RunSummary:
        start = time.perf_counter()
        pending = store.pending(cells)
        summary = RunSummary(total=len(cells), already_done=len(cells) - len(pending))
        progress.run_started(len(pending), summary.already_done)
        with CellQueue(store, pending, lease_seconds=self.lease_seconds) as queue:
            seen = 0
            while (cell := queue.next()) is not None:
                seen = report_elsewhere(queue, seen, summary, progress)
                progress.cell_started(cell, cell_size(cell))
                result = evaluate_cell(cell, progress.cell_advanced)
                store.commit(cell, result)
                summary.record(cell, result)
                progress.cell_finished(cell, result)
            report_elsewhere(queue, seen, summary, progress)
        summary.seconds = time.perf_counter() - start
        return summary

