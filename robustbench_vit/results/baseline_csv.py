"""Read a baseline CSV strictly: every problem is located (file, line, column, value), never a
traceback and never a silent choice.

A baseline holds one row per row key (model, defense, scenario, params, metric): a key written
twice is an error naming both lines, since a gate would otherwise compare with whichever came
last (appending a copy with value 0 would make every gate pass). `value`, `n`, `ci_low`,
`ci_high` and `suite_version` are numbers (empty: none); `n` is a count; a proportion's value and
interval lie in [0, 1]; `params` is a JSON object, compared in canonical form.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..core.cells import canonical_json
from ..core.errors import BaselineError
from ..core.plugins import load_plugins
from ..core.registry import METRICS

MAX_PROBLEMS = 20
"""Problems listed in one error (the rest are counted)."""


def _number(text: str) -> float:
    try:
        return float(text) if text.strip() else math.nan
    except ValueError:
        raise ValueError("is not a number") from None


def _count(text: str) -> float:
    value = _number(text)
    if not math.isnan(value) and (value < 0 or not value.is_integer()):
        raise ValueError("is not a count (a whole number >= 0)")
    return value


def _params(text: str) -> str:
    try:
        params = json.loads(text)
    except ValueError:
        raise ValueError("is not JSON") from None
    if not isinstance(params, dict):
        raise ValueError("is not a JSON object")
    return canonical_json(params)


def _name(text: str) -> str:
    if not text.strip():
        raise ValueError("is empty")
    return text


PARSERS: dict[str, Callable[[str], Any]] = {
    "value": _number, "ci_low": _number, "ci_high": _number, "n": _count,
    "suite_version": _count, "params": _params, "model": _name, "defense": _name,
    "scenario": _name, "metric": _name,
}
"""How each known column is read; other columns are text (empty: missing)."""


def read_baseline_csv(path: Path, *, required: Sequence[str], key: Sequence[str]) -> pd.DataFrame:
    """The rows of the baseline CSV at `path` (typed, params canonical, file order); BaselineError
    listing every problem otherwise."""
    header, records = _records(path)
    load_plugins()  # which metrics are proportions
    missing = [c for c in required if c not in header]
    if missing:
        raise BaselineError(f"{path}: line 1 (header): missing columns {', '.join(missing)} "
                            f"(a baseline CSV has {', '.join(required)})")
    problems: list[str] = []
    rows: list[dict[str, Any]] = []
    seen: dict[tuple[str, ...], int] = {}
    for line, fields in records:
        if len(fields) != len(header):
            problems.append(f"line {line}: {len(fields)} fields, the header has {len(header)}")
            continue
        row, found = _parse(dict(zip(header, fields, strict=True)), line)
        problems += found
        if found:
            continue
        ident = tuple(str(row[c]) for c in key)
        if ident in seen:
            problems.append(f"lines {seen[ident]} and {line}: the same row twice ("
                            + ", ".join(f"{c}={row[c]}" for c in key)
                            + "): a baseline holds one value per row; remove one")
        seen.setdefault(ident, line)
        rows.append(row)
    if problems:
        more = len(problems) - MAX_PROBLEMS
        listed = [f"{path}: {p}" for p in problems[:MAX_PROBLEMS]]
        raise BaselineError("\n".join(listed + ([f"... and {more} more"] if more > 0 else [])))
    return _frame(header, rows)


def _records(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and (first line number, fields) of each non-blank record."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BaselineError(f"{path}: not a UTF-8 text file ({exc.reason})") from None
    except OSError as exc:
        raise BaselineError(f"{path}: cannot read: {exc.strerror or exc}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if not header:
            raise BaselineError(f"{path}: empty, not a baseline CSV (no header line)")
        twice = sorted({c for c in header if header.count(c) > 1})
        if twice:
            raise BaselineError(f"{path}: line 1 (header): columns named twice: "
                                f"{', '.join(twice)}")
        records, start = [], reader.line_num + 1
        for fields in reader:
            if any(f.strip() for f in fields):
                records.append((start, fields))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise BaselineError(f"{path}: line {reader.line_num}: not CSV ({exc})") from None
    return header, records


def _parse(fields: dict[str, str], line: int) -> tuple[dict[str, Any], list[str]]:
    """The typed row, and its located problems."""
    row: dict[str, Any] = {}
    problems: list[str] = []
    for column, text in fields.items():
        parse = PARSERS.get(column)
        try:
            row[column] = parse(text) if parse else (text if text.strip() else math.nan)
        except ValueError as exc:
            problems.append(f"line {line}, column {column}: {_short(text)} {exc}")
    if not problems:
        problems = [f"line {line}, {p}" for p in _range_problems(row)]
    return row, problems


def _range_problems(row: dict[str, Any]) -> list[str]:
    """A proportion's value and interval in [0, 1]; an interval's low end not above its high."""
    metric = str(row.get("metric"))
    proportion = metric in METRICS and METRICS.get(metric).proportion
    problems = []
    for column in ("value", "ci_low", "ci_high"):
        value = row.get(column, math.nan)
        if proportion and not math.isnan(value) and not 0 <= value <= 1:
            problems.append(f"column {column}: {value!r} is outside [0, 1] (metric {metric} is "
                            "a proportion)")
    low, high = row.get("ci_low", math.nan), row.get("ci_high", math.nan)
    if low > high:  # False when either is NaN
        problems.append(f"columns ci_low, ci_high: {low!r} > {high!r}")
    return problems


def _short(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _frame(header: list[str], rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=header)
    for column in ("n", "suite_version"):
        if column in frame:
            frame[column] = pd.to_numeric(frame[column]).astype("Int64")
    for column in ("value", "ci_low", "ci_high"):
        if column in frame:
            frame[column] = frame[column].astype(float)
    return frame
