"""The results database: SQLite (WAL), one row per metric, one transaction per finished cell."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from ..core.cells import Cell, canonical_json
from ..core.metrics import Measurement
from ..core.records import CellResult
from ..core.versions import rbv_version, timm_version, torch_version

COLUMNS = [
    "run_id", "suite", "suite_version", "cell_key", "model", "defense", "scenario", "params",
    "metric", "value", "n", "ci_low", "ci_high", "seconds", "status", "error", "seed",
    "created_at", "rbv_version", "torch_version", "device", "timm_version", "flags", "examples",
]
"""`flags`: JSON list of the caveats on a row (attack-failure indicators), NULL when none;
`examples`: the per-example outcomes behind a proportion (`core.outcomes`), NULL when none."""

_TYPES = {"value": "REAL", "ci_low": "REAL", "ci_high": "REAL", "seconds": "REAL",
          "n": "INTEGER", "seed": "INTEGER", "suite_version": "INTEGER"}
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    {", ".join(f"{c} {_TYPES.get(c, 'TEXT')}" for c in COLUMNS)}
);
CREATE INDEX IF NOT EXISTS results_cell ON results(cell_key);
CREATE INDEX IF NOT EXISTS results_suite ON results(suite);
"""


class ResultStore:
    """Rows of finished cells in `<results>/rbv.sqlite`; the driver process is the only writer."""

    def __init__(self, results_dir: str | Path):
        self.dir = Path(results_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "rbv.sqlite"
        self._conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        self._add_missing_columns()
        self.run_id = uuid.uuid4().hex[:12]

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_missing_columns(self) -> None:
        """Upgrade a database written by an older version: add the columns it lacks (NULL)."""
        have = {row[1] for row in self._conn.execute("PRAGMA table_info(results)")}
        for column in COLUMNS:
            if column not in have:
                self._conn.execute(
                    f"ALTER TABLE results ADD COLUMN {column} {_TYPES.get(column, 'TEXT')}")

    def done_keys(self) -> set[str]:
        """Keys of cells finished with status ok or skipped (errored cells are retried)."""
        rows = self._conn.execute(
            "SELECT DISTINCT cell_key FROM results WHERE status IN ('ok', 'skipped')")
        return {r[0] for r in rows}

    def pending(self, cells: Iterable[Cell]) -> list[Cell]:
        """Cells not yet finished, in order, without duplicates."""
        done, seen, out = self.done_keys(), set(), []
        for cell in cells:
            if cell.key not in done and cell.key not in seen:
                seen.add(cell.key)
                out.append(cell)
        return out

    def commit(self, cell: Cell, result: CellResult) -> None:
        """Replace the rows of `cell` with `result` in one transaction."""
        rows = [tuple(r[c] for c in COLUMNS) for r in self._rows(cell, result)]
        placeholders = ", ".join("?" for _ in COLUMNS)
        with self._conn:
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("DELETE FROM results WHERE cell_key = ?", (cell.key,))
            self._conn.executemany(
                f"INSERT INTO results ({', '.join(COLUMNS)}) VALUES ({placeholders})", rows)

    def _rows(self, cell: Cell, result: CellResult) -> list[dict[str, Any]]:
        base = {
            "run_id": self.run_id, "suite": cell.suite, "suite_version": cell.suite_version,
            "cell_key": cell.key, "model": cell.model.name, "defense": cell.defense,
            "scenario": cell.scenario_label, "seconds": round(result.seconds, 4),
            "status": result.status, "error": result.error, "seed": cell.seed,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "rbv_version": rbv_version(), "torch_version": torch_version(),
            "device": result.device, "timm_version": timm_version(),
        }
        if not result.measurements:
            return [{**base, "params": canonical_json(cell.row_params), "metric": None,
                     "value": None, "n": None, "ci_low": None, "ci_high": None, "flags": None,
                     "examples": None}]
        return [{**base, "scenario": scenario_label(cell, m),
                 "params": canonical_json({**cell.row_params, **m.extra}),
                 "metric": m.metric, "value": m.value, "n": m.n, "ci_low": m.ci_low,
                 "ci_high": m.ci_high, "flags": json.dumps(list(m.flags)) if m.flags else None,
                 "examples": m.examples} for m in result.measurements]

    def frame(self, suite: str | None = None) -> pd.DataFrame:
        """All rows (of one suite when given) as a DataFrame with typed columns."""
        query = f"SELECT {', '.join(COLUMNS)} FROM results"
        args: tuple[Any, ...] = ()
        if suite:
            query, args = query + " WHERE suite = ?", (suite,)
        df = pd.read_sql_query(query + " ORDER BY id", self._conn, params=args)
        for col in ("n", "seed", "suite_version"):
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
        return df

    def count(self) -> int:
        """Number of rows."""
        return int(self._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])


def scenario_label(cell: Cell, measurement: Measurement) -> str:
    """The `scenario` column of a row: "kind:scenario_name" when the measurement names one."""
    if measurement.scenario_name:
        return f"{cell.scenario_kind}:{measurement.scenario_name}"
    return cell.scenario_label
