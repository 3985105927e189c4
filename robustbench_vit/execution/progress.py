"""Progress bars for the CLI (overall and per cell), fed by runner events."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..core.cells import Cell
from ..core.records import CellResult


class RichProgress:
    """Two bars on stderr: cells done of the run, images done of the current cell."""

    def __init__(self, console: Console, disable: bool = False):
        self._bars = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                              TimeElapsedColumn(), console=console, disable=disable,
                              transient=False)
        self._overall: Any = None
        self._cell: Any = None

    def __enter__(self) -> RichProgress:
        self._bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.stop()

    def run_started(self, total_cells: int, skipped_cells: int) -> None:
        note = f" ({skipped_cells} already stored)" if skipped_cells else ""
        self._overall = self._bars.add_task(f"cells{note}", total=total_cells)

    def cell_started(self, cell: Cell, size: int) -> None:
        label = f"  {cell.model.name}/{cell.defense}/{cell.scenario_label}"
        self._cell = self._bars.add_task(label[:60], total=size or None)

    def cell_advanced(self, n: int) -> None:
        if self._cell is not None:
            self._bars.advance(self._cell, n)

    def cell_finished(self, cell: Cell, result: CellResult) -> None:
        if self._cell is not None:
            self._bars.remove_task(self._cell)
            self._cell = None
        if result.status == "error":
            first = (result.error or "").splitlines()[0] if result.error else ""
            self._bars.console.print(f"[red]error[/] {cell.model.name}/{cell.defense}/"
                                     f"{cell.scenario_label}: {first}", highlight=False)
        self._bars.advance(self._overall, 1)

    def cell_done_elsewhere(self, cell: Cell) -> None:
        self._bars.advance(self._overall, 1)
