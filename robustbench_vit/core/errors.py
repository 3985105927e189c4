"""Exceptions with messages meant for users: the CLI prints them and exits with a code."""

from __future__ import annotations


class RbvError(Exception):
    """Base class of every error robustbench_vit raises on purpose."""

    exit_code = 1


class SuiteError(RbvError):
    """A suite file does not validate: names the file, the field path and what was expected."""

    exit_code = 2

    def __init__(self, file: str, problems: list[tuple[str, str]]):
        self.file = file
        self.problems = problems
        lines = [f"{file}: {path or '<root>'}: {msg}" for path, msg in problems]
        super().__init__("\n".join(lines))


class UnknownNameError(RbvError, KeyError):
    """A name that is not registered; carries did-you-mean suggestions."""

    exit_code = 2

    def __init__(self, kind: str, name: str, suggestions: list[str], known: list[str]):
        self.kind, self.name, self.suggestions, self.known = kind, name, suggestions, known
        hint = f"; did you mean {' or '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        super().__init__(f"unknown {kind} {name!r}{hint} (known: {', '.join(known) or 'none'})")

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return self.args[0]


class ModelLoadError(RbvError):
    """A model source cannot be built (offline pretrained weights, bad checkpoint, ...)."""

    exit_code = 2


class DataError(RbvError):
    """A data set cannot be loaded (missing root, wrong layout, ...)."""

    exit_code = 2


class ScenarioNotApplicable(RbvError):
    """Raised by a scenario that does not apply to a model or defense; the cell is stored as
    skipped."""


class UnsupportedModel(ScenarioNotApplicable):
    """A defense or scenario cannot handle this model family (the message says why); the cell is
    stored as skipped, and the plan lists it before anything runs."""


class MissingDependencyError(RbvError):
    """An optional package a component needs is not installed (the message says how to)."""

    exit_code = 2


class BaselineError(RbvError):
    """A baseline file is missing or unusable: the message names the file, and the line and
    column of each problem."""

    exit_code = 2


class DeviceError(RbvError):
    """A device the suite or the command line asks for is not on this machine (the message says
    what the machine has)."""

    exit_code = 2
