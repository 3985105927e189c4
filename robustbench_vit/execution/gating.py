"""Gates over a run: evaluate a suite's missing cells when asked, then check its gates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from ..config.suite import Suite
from ..results.gates import GateReport, check_gates, load_baseline, missing_cells, suite_table
from ..results.store import COLUMNS, ResultStore
from .run import run_suite


def run_gates(suite: Suite, results_dir: str | Path, baselines_dir: str | Path, *,
              evaluate: bool | None = None, progress: Any = None) -> GateReport:
    """Check the suite's gates against stored results; first run missing cells when `evaluate`
    (default: the suite's `gates.evaluate`)."""
    if evaluate if evaluate is not None else suite.gates.evaluate:
        run_suite(suite, results_dir, progress=progress)
    baseline = load_baseline(suite, baselines_dir) \
        if any(g.baseline for g in suite.gates.checks) else None
    results = Path(results_dir)
    if results.exists() and (not results.is_dir() or (results / "rbv.sqlite").exists()):
        with ResultStore(results, read_only=True) as store:  # a file there: StoreError
            frame = store.frame(suite.name)
    else:  # nothing evaluated yet: every gate fails as missing, and no database is created
        frame = pd.DataFrame(columns=COLUMNS)
    return GateReport(outcomes=check_gates(suite, suite_table(suite, frame), baseline),
                      missing_cells=missing_cells(suite, frame))
