"""pytest plugin (entry point `pytest11`): a suite YAML named on the command line is a test file.

    pytest suites/regression.yaml [--rbv-results DIR] [--rbv-baselines DIR] [--rbv-evaluate]

Each gate check becomes a test item whose id reads model/defense/scenario[params]/metric, so CI
systems report robustness regressions like test failures. YAML files are collected only when named
explicitly (or under a directory given with --rbv-suites), so ordinary test runs never evaluate
suites.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

_SUFFIXES = {".yaml", ".yml"}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rbv", "robustbench_vit gates")
    group.addoption("--rbv-results", default="results",
                    help="results folder the gates read (default: results)")
    group.addoption("--rbv-baselines", default="results/baselines",
                    help="folder of baseline CSV files (default: results/baselines)")
    group.addoption("--rbv-evaluate", action="store_true", default=None,
                    help="run a suite's missing cells first (default: the suite's gates.evaluate)")
    group.addoption("--rbv-suites", action="store_true", default=False,
                    help="collect every suite YAML with gates under the directories given")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix not in _SUFFIXES:
        return None
    config = parent.config
    named = {Path(arg.split("::")[0]).resolve() for arg in config.args}
    if file_path.resolve() not in named and not config.getoption("rbv_suites"):
        return None
    if not _has_gates(file_path):
        return None
    return SuiteFile.from_parent(parent, path=file_path)


def _has_gates(path: Path) -> bool:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return path.suffix in _SUFFIXES  # let the suite loader report the located error
    return isinstance(data, dict) and "suite" in data and bool(data.get("gates"))


class SuiteFile(pytest.File):
    """A suite file: loads the suite, optionally evaluates it, and yields one item per check."""

    def collect(self) -> Any:
        from .gates import run_gates
        from .spec import load_suite

        suite = load_suite(self.path)
        root = self.config.rootpath
        report = run_gates(suite, _under(root, self.config.getoption("rbv_results")),
                           _under(root, self.config.getoption("rbv_baselines")),
                           evaluate=self.config.getoption("rbv_evaluate"))
        for outcome in report.outcomes:
            yield GateItem.from_parent(self, name=outcome.id, outcome=outcome,
                                       missing=report.missing_cells)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        from .errors import RbvError

        if isinstance(excinfo.value, RbvError):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)


class GateFailed(Exception):
    """A gate check that did not pass."""


class GateItem(pytest.Item):
    """One gate check on one result row."""

    def __init__(self, *, outcome: Any, missing: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.outcome = outcome
        self.missing = missing
        self.user_properties.append(("value", outcome.value))

    def runtest(self) -> None:
        if not self.outcome.passed:
            raise GateFailed(self.outcome.message)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, GateFailed):
            text = f"gate failed: {self.name}\n  {excinfo.value}"
            if self.missing:
                text += f"\n  ({self.missing} cells of the suite have no stored result)"
            return text
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"gate {self.name}"


def _under(root: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else root / path
