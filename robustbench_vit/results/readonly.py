"""Open the results database for reading only: commands that only read (`rbv leaderboard`,
`rbv export-html`, `rbv gate` without evaluation, the pytest plugin) work on a read-only folder.

The connection is opened with SQLite's `mode=ro`: it creates no database, no schema and never
switches the journal mode. A WAL database read that way still needs its `-shm` file, which SQLite
cannot create in a folder it may not write to; there the database is opened `immutable=1`
instead (no locking, no change detection: right for a folder nobody can write to, and the log
says so).
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

log = logging.getLogger(__name__)

_PROBE = "SELECT COUNT(*) FROM sqlite_master"


def connect_read_only(path: Path, *, timeout: float) -> sqlite3.Connection:
    """A connection to the database at `path` that cannot write; sqlite3 errors propagate (a
    file that is not a database, a busy database)."""
    uri = path.resolve().as_uri()
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=timeout, isolation_level=None)
    try:
        conn.execute(_PROBE).fetchone()
        return conn
    except sqlite3.OperationalError as exc:
        conn.close()
        if not _cannot_share(exc):
            raise
        reason = exc
    log.info("results database %s: its folder is not writable (%s): reading it as immutable",
             path, reason)
    wal = path.with_name(path.name + "-wal")
    if wal.is_file() and wal.stat().st_size:
        log.warning("results database %s: %s is not empty (a run was interrupted or is writing): "
                    "its latest rows may be missing from what is read", path, wal.name)
    conn = sqlite3.connect(f"{uri}?mode=ro&immutable=1", uri=True, timeout=timeout,
                           isolation_level=None)
    try:
        conn.execute(_PROBE).fetchone()
    except sqlite3.Error:
        conn.close()
        raise
    return conn


def _cannot_share(exc: sqlite3.OperationalError) -> bool:
    """Whether `exc` says SQLite could not create the WAL's shared-memory file beside the
    database (SQLITE_READONLY_DIRECTORY, SQLITE_CANTOPEN...)."""
    name = getattr(exc, "sqlite_errorname", "")
    text = str(exc).lower()
    return name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN")) or "readonly" in text \
        or "unable to open" in text
