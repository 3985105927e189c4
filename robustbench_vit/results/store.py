"""The results database: SQLite (WAL), one row per metric, one transaction per finished cell,
and the leases by which concurrent runs on one results folder share the cells.

A busy database is waited for (retries with backoff) and, past `busy_seconds`, reported as
`StoreBusy`; any other database failure (no space, read-only folder, not a database) is a
`StoreError` that names the file. Neither is ever a traceback, and a failed transaction leaves
the stored rows as they were.

Commands that only read open the store with `read_only=True` (`results.readonly`): no folder,
database or schema is created, and a read-only folder can be read. Rows are checked as they are
read (`results.row_checks`): a malformed one is a StoreError naming its id and column.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import pandas as pd

from ..core import faults
from ..core.cells import Cell, canonical_json
from ..core.errors import RbvError
from ..core.metrics import Measurement
from ..core.records import CellResult
from ..core.versions import rbv_version, timm_version, torch_version
from .readonly import connect_read_only
from .row_checks import row_problems

log = logging.getLogger(__name__)

COLUMNS = [
    "run_id", "suite", "suite_version", "cell_key", "model", "defense", "scenario", "params",
    "metric", "value", "n", "ci_low", "ci_high", "seconds", "status", "error", "seed",
    "created_at", "rbv_version", "torch_version", "device", "timm_version", "flags", "examples",
    "weights",
]
"""`flags`: JSON list of the caveats on a row (attack-failure indicators), NULL when none;
`examples`: the per-example outcomes behind a proportion (`core.outcomes`), NULL when none;
`weights`: the evaluated model's weights fingerprint (`models.digest`), NULL in rows of older
versions and of cells that failed before the model was built."""

_TYPES = {"value": "REAL", "ci_low": "REAL", "ci_high": "REAL", "seconds": "REAL",
          "n": "INTEGER", "seed": "INTEGER", "suite_version": "INTEGER"}
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS results (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    {", ".join(f"{c} {_TYPES.get(c, 'TEXT')}" for c in COLUMNS)}
);
CREATE INDEX IF NOT EXISTS results_cell ON results(cell_key);
CREATE INDEX IF NOT EXISTS results_suite ON results(suite);
CREATE TABLE IF NOT EXISTS leases (
    cell_key TEXT PRIMARY KEY, owner TEXT NOT NULL, host TEXT, pid INTEGER,
    acquired REAL, heartbeat REAL
);
"""
"""`leases`: the cells a live run is computing. `owner` is the run's `run_id`; `heartbeat` (Unix
seconds) is renewed while the run lives. A lease whose heartbeat is older than the run's
`lease_seconds`, or whose process is gone from this host, is taken over."""

T = TypeVar("T")
Claim = Literal["mine", "done", "held"]


class StoreError(RbvError):
    """The results database cannot be opened, read or written (the message names the file)."""

    exit_code = 2


class StoreBusy(StoreError):
    """Another process held the results database locked for longer than we wait."""


@dataclass(frozen=True)
class Lease:
    """Who holds a cell: run, host, process id, and the last heartbeat (Unix seconds)."""

    owner: str
    host: str
    pid: int
    heartbeat: float


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class ResultStore:
    """Rows of finished cells in `<results>/rbv.sqlite`. Each run (one driver process) writes its
    own cells; concurrent runs on one folder coordinate through the leases."""

    def __init__(self, results_dir: str | Path, *, busy_seconds: float = 600.0,
                 read_only: bool = False):
        self.dir = Path(results_dir)
        self.path = self.dir / "rbv.sqlite"
        self.busy_seconds = busy_seconds
        self.read_only = read_only
        self.run_id = uuid.uuid4().hex[:12]
        self.host, self.pid = socket.gethostname(), os.getpid()
        if read_only:  # creates nothing: no folder, no database, no schema, no WAL switch
            self._conn = self._guard(self._connect_read_only)
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise StoreError(f"results folder {self.dir} is a file, not a folder") from None
        except OSError as exc:
            raise StoreError(f"cannot create results folder {self.dir}: "
                             f"{exc.strerror or exc}") from None
        self._conn = self._guard(self._connect)
        self._guard(self._init_schema)

    def sibling(self) -> ResultStore:
        """Another connection to the same database acting for the same run (for a thread)."""
        other = ResultStore(self.dir, busy_seconds=self.busy_seconds, read_only=self.read_only)
        other.run_id = self.run_id
        return other

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=5, isolation_level=None)

    def _connect_read_only(self) -> sqlite3.Connection:
        """A connection that cannot write (for commands that only read); StoreError when there is
        no database to read."""
        if self.dir.exists() and not self.dir.is_dir():
            raise StoreError(f"results folder {self.dir} is a file, not a folder")
        if not self.path.is_file():
            raise StoreError(f"no results database in {self.dir} (run `rbv evaluate` first)")
        return connect_read_only(self.path, timeout=5)

    def _init_schema(self) -> None:
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        self._add_missing_columns()

    def _guard(self, operation: Callable[[], T]) -> T:
        """Run `operation`, retrying with backoff while the database is locked (up to
        `busy_seconds`); database failures become StoreBusy / StoreError naming the file."""
        deadline, wait = time.monotonic() + self.busy_seconds, 0.05
        while True:
            try:
                return operation()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise StoreError(f"results database {self.path}: {exc}") from None
                if time.monotonic() >= deadline:
                    raise StoreBusy(f"results database {self.path} stayed locked for "
                                    f"{self.busy_seconds:.0f}s (another process holds it): "
                                    f"{exc}") from None
                log.debug("results database busy (%s): retrying in %.2fs", exc, wait)
                time.sleep(wait)
                wait = min(wait * 2, 2.0)
            except sqlite3.DatabaseError as exc:  # not a database, malformed
                raise StoreError(f"results database {self.path}: {exc}") from None

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
        rows = self._guard(lambda: self._conn.execute(
            "SELECT DISTINCT cell_key FROM results WHERE status IN ('ok', 'skipped')").fetchall())
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
        """Replace the rows of `cell` with `result`, and drop this run's lease on it, in one
        transaction (retried while the database is busy)."""
        rows = [tuple(r[c] for c in COLUMNS) for r in self._rows(cell, result)]
        placeholders = ", ".join("?" for _ in COLUMNS)

        def write() -> None:
            with self._transaction():
                self._conn.execute("DELETE FROM results WHERE cell_key = ?", (cell.key,))
                faults.hit("store.commit", self.path)
                self._conn.executemany(
                    f"INSERT INTO results ({', '.join(COLUMNS)}) VALUES ({placeholders})", rows)
                self._conn.execute("DELETE FROM leases WHERE cell_key = ? AND owner = ?",
                                   (cell.key, self.run_id))

        self._guard(write)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT; rolled back when the block raises."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    # leases ------------------------------------------------------------------------------

    def claim(self, key: str, *, lease_seconds: float, finished_by: str | None = None) -> Claim:
        """Take the lease on cell `key` for this run: "mine" when taken (free, ours already,
        stale, or its process is gone from this host), "done" when the cell is finished (or was
        committed, with any status, by run `finished_by`, the run seen holding it before), "held"
        when a live run holds it."""
        def attempt() -> Claim:
            with self._transaction():
                done = self._conn.execute(
                    "SELECT 1 FROM results WHERE cell_key = ? AND (status IN ('ok', 'skipped')"
                    " OR run_id = ?) LIMIT 1", (key, finished_by or "")).fetchone()
                if done:
                    return "done"
                lease = self._lease(key)
                if lease is not None and lease.owner != self.run_id and self._live(
                        lease, lease_seconds):
                    return "held"
                now = time.time()
                self._conn.execute(
                    "INSERT OR REPLACE INTO leases (cell_key, owner, host, pid, acquired, "
                    "heartbeat) VALUES (?, ?, ?, ?, ?, ?)",
                    (key, self.run_id, self.host, self.pid, now, now))
                if lease is not None and lease.owner != self.run_id:
                    log.info("took over cell %s from run %s (%s pid %d, silent for %.0fs)",
                             key[:12], lease.owner, lease.host, lease.pid,
                             now - lease.heartbeat)
                return "mine"

        return self._guard(attempt)

    def holder(self, key: str) -> Lease | None:
        """The lease on `key`, if any (live or not)."""
        return self._guard(lambda: self._lease(key))

    def _lease(self, key: str) -> Lease | None:
        row = self._conn.execute("SELECT owner, host, pid, heartbeat FROM leases "
                                 "WHERE cell_key = ?", (key,)).fetchone()
        return Lease(row[0], row[1] or "", int(row[2] or 0), float(row[3] or 0)) if row else None

    def _live(self, lease: Lease, lease_seconds: float) -> bool:
        if time.time() - lease.heartbeat > lease_seconds:
            return False
        return lease.host != self.host or _pid_alive(lease.pid)

    def heartbeat(self) -> None:
        """Renew every lease this run holds."""
        def beat() -> None:
            with self._transaction():
                self._conn.execute("UPDATE leases SET heartbeat = ? WHERE owner = ?",
                                   (time.time(), self.run_id))
        self._guard(beat)

    def release(self, key: str | None = None) -> None:
        """Drop this run's lease on `key` (every lease of this run when None)."""
        def drop() -> None:
            with self._transaction():
                if key is None:
                    self._conn.execute("DELETE FROM leases WHERE owner = ?", (self.run_id,))
                else:
                    self._conn.execute("DELETE FROM leases WHERE cell_key = ? AND owner = ?",
                                       (key, self.run_id))
        self._guard(drop)

    def _rows(self, cell: Cell, result: CellResult) -> list[dict[str, Any]]:
        base = {
            "run_id": self.run_id, "suite": cell.suite, "suite_version": cell.suite_version,
            "cell_key": cell.key, "model": cell.model.name, "defense": cell.defense,
            "scenario": cell.scenario_label, "seconds": round(result.seconds, 4),
            "status": result.status, "error": result.error, "seed": cell.seed,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "rbv_version": rbv_version(), "torch_version": torch_version(),
            "device": result.device, "timm_version": timm_version(), "weights": result.weights,
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
        have = self._guard(self._columns)
        if not have:
            raise StoreError(f"results database {self.path} has no results table (not a results "
                             "database of rbv)")
        # a database of an older version, opened read-only, lacks the newer columns: NULL
        selected = ", ".join(c if c in have else f"NULL AS {c}" for c in COLUMNS)
        query = f"SELECT id, {selected} FROM results"
        args: tuple[Any, ...] = ()
        if suite:
            query, args = query + " WHERE suite = ?", (suite,)
        rows = self._guard(lambda: self._conn.execute(query + " ORDER BY id", args).fetchall())
        problems = row_problems([r[0] for r in rows], COLUMNS, [r[1:] for r in rows])
        if problems:
            raise StoreError(f"results database {self.path}: malformed rows (fix or delete them, "
                             "or rerun their cells):\n  " + "\n  ".join(problems))
        df = pd.DataFrame.from_records([r[1:] for r in rows], columns=COLUMNS, coerce_float=True)
        for col in ("n", "seed", "suite_version"):
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
        return df

    def _columns(self) -> set[str]:
        return {row[1] for row in self._conn.execute("PRAGMA table_info(results)")}

    def count(self) -> int:
        """Number of rows."""
        return int(self._guard(
            lambda: self._conn.execute("SELECT COUNT(*) FROM results").fetchone()[0]))


def scenario_label(cell: Cell, measurement: Measurement) -> str:
    """The `scenario` column of a row: "kind:scenario_name" when the measurement names one."""
    if measurement.scenario_name:
        return f"{cell.scenario_kind}:{measurement.scenario_name}"
    return cell.scenario_label
