"""Chunks: a cell's images split into batch-aligned ranges, evaluated apart, merged exactly.

Only scenarios that declare `chunkable = True` are split (clean, attack, corruption): `partial`
returns per-image or per-batch sufficient statistics and `merge` turns the statistics of consecutive
chunks into the very rows the whole cell gives. Chunks start on batch boundaries, so every batch
holds the same images as in the whole cell and its random seed (seed + batch index in the cell) is
the same: PGD's random start, square's queries and EOT draws do not depend on how the cell was
split.
"""

from __future__ import annotations

import logging
import traceback

from ..core.cells import Cell
from ..core.errors import ScenarioNotApplicable
from ..core.metrics import require_registered
from ..core.plugins import load_plugins
from ..core.records import CellResult, Span
from .evaluate import build_scenario, cell_size

log = logging.getLogger(__name__)


def chunk_spans(cell: Cell, chunk_size: int | None) -> list[Span] | None:
    """Batch-aligned [start, stop) ranges of about `chunk_size` images, or None to run it whole."""
    if not chunk_size:
        return None
    load_plugins()
    try:
        chunkable = bool(build_scenario(cell).chunkable)
    except Exception:  # noqa: BLE001 - a bad cell runs whole and reports its own error
        return None
    total = cell_size(cell)
    batch = cell.data.batch_size
    step = max(1, -(-chunk_size // batch)) * batch  # rounded up to whole batches
    if not chunkable or total <= step:
        return None
    return [(start, min(start + step, total)) for start in range(0, total, step)]


def merge_chunks(cell: Cell, parts: list[CellResult]) -> CellResult:
    """One cell's result from its chunks' results (image order); a failed chunk fails the cell."""
    seconds = sum(p.seconds for p in parts)
    failed = next((p for p in parts if p.status != "ok"), None)
    if failed is not None:
        return CellResult(cell_key=cell.key, status=failed.status, error=failed.error,
                          seconds=seconds, device=failed.device)
    try:
        measurements = build_scenario(cell).merge([p.partial for p in parts])
        require_registered(m.metric for m in measurements)
    except ScenarioNotApplicable as exc:  # e.g. nothing to attack: skipped, as a whole cell is
        return CellResult(cell_key=cell.key, status="skipped", seconds=seconds,
                          device=parts[0].device, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - recorded like any failing cell
        log.debug("merging the chunks of %s failed", cell.key, exc_info=True)
        return CellResult(cell_key=cell.key, status="error", seconds=seconds,
                          device=parts[0].device,
                          error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=8)}")
    return CellResult(cell_key=cell.key, status="ok", measurements=measurements, seconds=seconds,
                      device=parts[0].device, weights=parts[0].weights)
