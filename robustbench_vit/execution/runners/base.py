"""The runner contract: progress events and the run summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ...core.cells import Cell
from ...core.records import CellResult
from ...results.store import ResultStore


class Progress(Protocol):
    """Receives progress events (the CLI draws bars; library code never prints)."""

    def run_started(self, total_cells: int, skipped_cells: int) -> None: ...
    def cell_started(self, cell: Cell, size: int) -> None: ...
    def cell_advanced(self, n: int) -> None: ...
    def cell_finished(self, cell: Cell, result: CellResult) -> None: ...


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


@dataclass(kw_only=True)
class RunSummary:
    """What a run did: counts by status, and the errors."""

    total: int = 0
    already_done: int = 0
    ok: int = 0
    skipped: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

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
    """Runs pending cells, committing each result to the store as it finishes."""

    def run(self, cells: list[Cell], store: ResultStore, progress: Progress) -> RunSummary: ...
