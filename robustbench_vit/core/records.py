"""Plain records that cross layer and process boundaries: a cell's result and a chunk's span."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .metrics import Measurement


@dataclass(frozen=True, kw_only=True)
class CellResult:
    """The outcome of one cell: measurements, or a skip/error reason. Plain data."""

    cell_key: str
    status: str  # ok | skipped | error
    measurements: list[Measurement] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    device: str = "cpu"
    weights: str | None = None
    """The evaluated model's weights fingerprint (models.digest), None when it was not built."""
    partial: Any = None
    """A chunk's sufficient statistics (see Scenario.partial); None for a whole cell."""


Span = tuple[int, int]
"""[start, stop) positions of a chunk in a cell's evaluated slice (batch-aligned)."""
