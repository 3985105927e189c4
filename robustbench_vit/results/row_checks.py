"""Check rows read from the results database before anything computes with them.

A row edited or written by another tool (a value that is text, params that are not JSON, a status
outside ok / skipped / error) is reported by its id, column and value: the leaderboard, the HTML
page and the gates stop with that message (exit 2) rather than a traceback or a number made up
from a broken row. Fix or delete the row (`DELETE FROM results WHERE id = ...`), or rerun its cell.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

STATUSES = ("ok", "skipped", "error")
MAX_LISTED = 10
"""Problems listed in one message (the rest are counted)."""


def _number(value: Any) -> str | None:
    ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
    return None if ok else "is not a number"


def _count(value: Any) -> str | None:
    return None if value is None or (isinstance(value, int) and value >= 0) \
        else "is not a count (a whole number >= 0)"


def _integer(value: Any) -> str | None:
    return None if value is None or isinstance(value, int) else "is not an integer"


def _text(value: Any) -> str | None:
    return None if value is None or isinstance(value, str) else "is not text"


def _status(value: Any) -> str | None:
    return None if value in STATUSES else f"is not one of {', '.join(STATUSES)}"


def _json_of(kind: type, name: str, *, nullable: bool) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value is None and nullable:
            return None
        try:
            decoded = json.loads(value) if isinstance(value, str) else None
        except ValueError:
            decoded = None
        return None if isinstance(decoded, kind) else f"is not a JSON {name}"
    return check


CHECKS: dict[str, Callable[[Any], str | None]] = {
    "value": _number, "ci_low": _number, "ci_high": _number, "seconds": _number,
    "n": _count, "seed": _integer, "suite_version": _integer, "status": _status,
    "params": _json_of(dict, "object", nullable=True),
    "flags": _json_of(list, "list", nullable=True),
    "suite": _text, "cell_key": _text, "model": _text, "defense": _text, "scenario": _text,
    "metric": _text, "examples": _text,
}
"""Column -> check returning what is wrong with a value (None when fine)."""


def row_problems(ids: Sequence[int], columns: Sequence[str],
                 rows: Sequence[Sequence[Any]]) -> list[str]:
    """"row id N, column C: VALUE is not ..." for each bad value of `rows` (as SQLite returns
    them), at most MAX_LISTED, then how many more."""
    checks = [(index, column, CHECKS[column]) for index, column in enumerate(columns)
              if column in CHECKS]
    found = []
    for ident, row in zip(ids, rows, strict=True):
        for index, column, check in checks:
            why = check(row[index])
            if why:
                found.append(f"row id {ident}, column {column}: {_short(row[index])} {why}")
        record = dict(zip(columns, row, strict=True))
        if record.get("status") == "ok" and record.get("metric") is not None \
                and record.get("params") is None:
            found.append(f"row id {ident}, column params: None (a measurement needs its params)")
    if len(found) > MAX_LISTED:
        found = [*found[:MAX_LISTED], f"... and {len(found) - MAX_LISTED} more"]
    return found


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
