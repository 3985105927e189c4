"""The runner contract: progress events and the run summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ...core.cells import Cell
from ...core.records import CellResult
from ...results.store import ResultStore
from ..claims import CellQueue


class Progress(Protocol):
    """Receives progress events (the CLI draws bars; library code never prints)."""

    def run_started(self, total_cells: int, skipped_cells: int) -> None: ...
    def cell_started(self, cell: Cell, size: int) -> None: ...
    def cell_advanced(self, n: int) -> None: ...
    def cell_finished(self, cell: Cell, result: CellResult) -> None: ...
    def cell_done_elsewhere(self, cell: Cell) -> None: ...


class NullProgress:
    """Progress that ignores every event."""

    def run_started(self, total_cells: int, skipped_cells: int) -> None:
        pass

    def cell_started(self, cell: Cell, size: int) -> None:
        pass

    def cell_advanced(self, n: int) -> None:
        pass

    def cell_finished(self, cell: Cell, result: CellResult) -> None:
        pass

    def cell_done_elsewhere(self, cell: Cell) -> None:
        pass


@dataclass(kw_only=True)
class RunSummary:
    """What a run did: counts by status, and the errors."""

    total: int = 0
    already_done: int = 0
    elsewhere: int = 0
    """Cells another run (on the same results folder) finished while this one ran."""
    ok: int = 0
    skipped: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def computed(self) -> int:
        """Cells this run evaluated (whatever their status)."""
        return self.ok + self.skipped + len(self.errors)

    def record(self, cell: Cell, result: CellResult) -> None:
        """Count one finished cell."""
        if result.status == "ok":
            self.ok += 1
        elif result.status == "skipped":
            self.skipped += 1
        else:
            self.errors.append((f"{cell.model.name}/{cell.defense}/{cell.scenario_label}",
                                result.error or ""))


class Runner(Protocol):
    """Runs pending cells, committing each result to the store as it finishes. A cell is
    computed only once leased (`claims.CellQueue`), so concurrent runs share the work."""

    def run(self, cells: list[Cell], store: ResultStore, progress: Progress) -> RunSummary: ...


def report_elsewhere(queue: CellQueue, seen: int, summary: RunSummary,
                     progress: Progress) -> int:
    """Report the cells other runs finished since the last call (`seen` reported before);
    returns how many are reported now."""
    for cell in queue.elsewhere[seen:]:
        progress.cell_done_elsewhere(cell)
    summary.elsewhere = len(queue.elsewhere)
    return len(queue.elsewhere)
