"""The suite's `limits:` (cells, iterations): checked while validating, before anything runs.

The cell count is the product of the sweep sizes, computed before a single sweep point is
expanded or validated, so a sweep of a million cells is refused at once. Iteration counts are
the fields named in `ITERATION_FIELDS` of every scenario point (attack fields included), so a new
attack or scenario with `steps` or `n_queries` is capped without edits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..core.errors import SuiteError
from .spec import SuiteSpec

ITERATION_FIELDS = ("steps", "n_queries")
"""Fields that count iterations (gradient steps, queries): capped by `limits.max_steps`."""


def check_cell_count(spec: SuiteSpec, path: str) -> None:
    """Raise SuiteError when the suite would expand to more than `limits.max_cells` cells."""
    points = [math.prod(len(values) for values in s.sweep.values()) for s in spec.scenarios]
    pairs = sum(len(m.defenses) for m in spec.models)
    total, cap = pairs * sum(points), spec.limits.max_cells
    if total <= cap:
        return
    biggest = max(range(len(points)), key=points.__getitem__)
    where = f"scenarios[{biggest}].sweep" if points[biggest] > 1 else ""
    alone = f"; this sweep alone: {points[biggest]:,}" if where else ""
    raise SuiteError(path, [(where, (
        f"the suite expands to {total:,} cells ({pairs} model/defense pairs × {sum(points):,} "
        f"scenario points{alone}), over limits.max_cells = {cap:,}; set "
        "`limits: {max_cells: N}` in the suite to raise it"))])


def iteration_problems(index: int, sweep: dict[str, list[Any]],
                       points: Sequence[dict[str, Any]], cap: int) -> list[tuple[str, str]]:
    """(field path, message) for each iteration count of scenario `index` above `cap`, located
    in its sweep (`scenarios[1].sweep.steps[2]`) or its own field (`scenarios[1].steps`)."""
    problems: list[tuple[str, str]] = []
    for name in ITERATION_FIELDS:
        values = {p[name] for p in points if isinstance(p.get(name), int) and p[name] > cap}
        for value in sorted(values):
            where = f"scenarios[{index}].{name}"
            if name in sweep:
                where = next((f"scenarios[{index}].sweep.{name}[{i}]"
                              for i, raw in enumerate(sweep[name]) if raw == value),
                             f"scenarios[{index}].sweep.{name}")
            problems.append((where, (
                f"{name} {value:,} is over limits.max_steps = {cap:,}; set "
                "`limits: {max_steps: N}` in the suite to raise it")))
    return problems
