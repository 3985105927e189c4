"""Published corruption-error tables shipped with the package, usable as an mCE baseline.

A suite names one as `baseline: published:<name>`. Each is a CSV in robustbench_vit/data with rows
`corruption,severity,error` (error rates in [0,1]); the row `clean,0,<error>` holds the clean error
that relative mCE subtracts. `#` lines are comments (provenance).
"""

from __future__ import annotations

import csv
import functools
import importlib.resources
from dataclasses import dataclass

PREFIX = "published:"
TABLES: dict[str, str] = {"alexnet": "alexnet_imagenet_c.csv"}
"""name -> CSV file in robustbench_vit/data/tables: AlexNet on ImageNet-C (Hendrycks &
Dietterich 2019)."""


@dataclass(frozen=True, kw_only=True)
class ErrorTable:
    """Error rates per (corruption, severity) and the clean error of one model."""

    errors: dict[tuple[str, int], float]
    clean: float | None


def is_published(baseline: str | None) -> bool:
    """Whether `baseline` names a published table ("published:<name>")."""
    return bool(baseline) and str(baseline).startswith(PREFIX)


def table_names() -> list[str]:
    """The baselines a suite may name, as "published:<name>"."""
    return [PREFIX + name for name in sorted(TABLES)]


@functools.cache
def published_table(baseline: str) -> ErrorTable:
    """The table that "published:<name>" names; KeyError when there is none."""
    name = baseline.removeprefix(PREFIX)
    if name not in TABLES:
        raise KeyError(f"no published error table {baseline!r} (known: {', '.join(table_names())})")
    text = (importlib.resources.files(__package__) / "tables" / TABLES[name]).read_text()
    rows = csv.DictReader(line for line in text.splitlines()
                          if line.strip() and not line.lstrip().startswith("#"))
    errors: dict[tuple[str, int], float] = {}
    clean = None
    for row in rows:
        if row["corruption"] == "clean":
            clean = float(row["error"])
        else:
            errors[(row["corruption"], int(row["severity"]))] = float(row["error"])
    return ErrorTable(errors=errors, clean=clean)
