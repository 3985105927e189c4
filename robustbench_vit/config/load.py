"""Load a suite file: YAML -> validated spec -> Suite (components built, cells expandable)."""

from __future__ import annotations

from pathlib import Path

from .spec import parse_suite
from .suite import Suite, build_suite


def load_suite(path: str | Path) -> Suite:
    """Read, validate and build a suite file; raises SuiteError listing every problem."""
    path = Path(path)
    return build_suite(parse_suite(path), path)
