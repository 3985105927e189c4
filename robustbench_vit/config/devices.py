"""Refuse, before anything runs, a device this machine does not have (exit 2, located)."""

from __future__ import annotations

from ..core.devices import device_problem
from ..core.errors import DeviceError, SuiteError
from .suite import Suite


def check_device(suite: Suite, device: str | None = None, *, option: str = "--device") -> None:
    """Raise when the device the cells would run on is not on this machine: `device` (given on
    the command line as `option`) when set, else the suite's `device:` field (a SuiteError
    naming the file and the field). `auto` always passes."""
    if device is not None:
        problem = device_problem(device)
        if problem is not None:
            raise DeviceError(f"{option} {problem}")
        return
    problem = device_problem(suite.device)
    if problem is not None:
        raise SuiteError(suite.path, [("device", problem)])


def runs_here(suite: Suite, backend: str | None = None) -> bool:
    """Whether the cells run on this machine (the local backend), so its devices are the ones
    that count; Ray workers check their own device in each cell (an error row)."""
    return (backend or suite.runner.get("backend", "local")) == "local"
