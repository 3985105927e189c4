"""pytest plugin (entry point `pytest11`): a suite YAML named on the command line is a test file.

    pytest suites/regression.yaml [--rbv-results DIR] [--rbv-baselines DIR] [--rbv-evaluate]

Each gate becomes a test item whose id reads model/defense/scenario[params]/metric (its
patterns), so CI systems report robustness regressions like test failures; a failing item lists
every row that failed. Collection only reads the suite: evaluation happens when the items run.
YAML files are collected only when named explicitly (or under a directory given with
--rbv-suites), so ordinary test runs never evaluate suites. This module imports no torch: pytest
loads it wherever the package is installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from _pytest._code.code import TerminalRepr, TracebackStyle

    from .results.gates import GateReport

_SUFFIXES = {".yaml", ".yml"}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("rbv", "robustbench_vit gates")
    group.addoption("--rbv-results", default=None,
                    help="results folder the gates read (default: results under the rootdir; a "
                         "relative path given here is relative to where pytest was started)")
    group.addoption("--rbv-baselines", default=None,
                    help="folder of baseline CSV files (default: results/baselines under the "
                         "rootdir; a relative path given here is relative to where pytest was "
                         "started)")
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
    """A suite file: one item per gate; the suite is evaluated (when asked) and checked only when
    the first item runs, never during collection (`pytest --collect-only` touches no results)."""

    def collect(self) -> Iterator[GateItem]:
        from .config.load import load_suite
        from .results.gates import gate_ids

        self.suite = load_suite(self.path)
        self._report: GateReport | None = None
        for index, name in enumerate(gate_ids(self.suite.gates.checks)):
            item = GateItem.from_parent(self, name=name, gate=index)
            spec = self.suite.gates.checks[index]
            if spec.expect == "fail":
                # only a checked claim that fails is expected: a gate matching no row raises
                # GateMissing, which stays a failure
                item.add_marker(pytest.mark.xfail(reason=spec.reason or "", raises=GateFailed,
                                                  strict=False))
            yield item

    def report(self) -> GateReport:
        """The gate report of the suite, computed once (evaluating missing cells if asked)."""
        if self._report is None:
            from .execution.gating import run_gates

            self._report = run_gates(
                self.suite, _folder(self.config, "rbv_results", "results"),
                _folder(self.config, "rbv_baselines", "results/baselines"),
                evaluate=self.config.getoption("rbv_evaluate"))
        return self._report

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: TracebackStyle | None = None) -> str | TerminalRepr:
        from .core.errors import RbvError

        if isinstance(excinfo.value, RbvError):
            return str(excinfo.value)
        # a Collector's repr_failure takes no `style`: it picks the style from --tb itself
        return super().repr_failure(excinfo)


class GateFailed(Exception):
    """A gate check that did not pass."""


class GateMissing(Exception):
    """A gate that matched no stored row (never an expected failure)."""


class GateItem(pytest.Item):
    """One gate of the suite: passes when every row it selects passes its checks."""

    def __init__(self, *, gate: int, **kwargs: Any):
        super().__init__(**kwargs)
        self.gate = gate
        self.missing = 0

    def runtest(self) -> None:
        if not isinstance(self.parent, SuiteFile):
            raise TypeError(f"gate {self.name} is not inside a suite file")
        report = self.parent.report()
        self.missing = report.missing_cells
        outcomes = [o for o in report.outcomes if o.gate == self.gate]
        for outcome in outcomes:
            self.user_properties.append((outcome.id, outcome.value))
        failed = [o for o in outcomes if not o.passed]
        if failed:
            lines = [f"{o.id}: {o.message}" for o in failed]
            if any(o.value is None for o in failed):
                raise GateMissing("\n  ".join(lines))
            head = f"{len(failed)} of {len(outcomes)} checked row(s) failed"
            raise GateFailed("\n  ".join([head, *lines]))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: TracebackStyle | None = None) -> str | TerminalRepr:
        from .core.errors import RbvError

        if isinstance(excinfo.value, (GateFailed, GateMissing)):
            text = f"gate failed: {self.name}\n  {excinfo.value}"
            if self.missing:
                text += f"\n  ({self.missing} cells of the suite have no stored result)"
            return text
        if isinstance(excinfo.value, RbvError):
            return f"gate not checked: {self.name}\n  {excinfo.value}"
        return super().repr_failure(excinfo, style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"gate {self.name}"


def _folder(config: pytest.Config, option: str, default: str) -> Path:
    """The folder an option names: relative to the invocation directory, like any path on a
    command line (not to the rootdir, which moves with the arguments); when not given, `default`
    under the rootdir, where the project keeps its results."""
    value = config.getoption(option)
    if value is None:
        return config.rootpath / default
    path = Path(value)
    return path if path.is_absolute() else config.invocation_params.dir / path
