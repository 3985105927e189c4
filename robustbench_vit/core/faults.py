"""Failpoints: named places where a test makes this process fail on purpose.

The fault-injection tests run the real console script with `RBV_FAULTS` set, e.g.

    RBV_FAULTS="store.commit=kill@3"         SIGKILL this process the 3rd time a commit is
                                             half-done (old rows deleted, new ones not inserted)
    RBV_FAULTS="write=enospc"                the first atomic write fails with ENOSPC
    RBV_FAULTS="write=enospc@2,cache.entry=kill"

Actions: `kill` (SIGKILL, no cleanup runs: what a crash or the OOM killer does), `enospc`,
`eacces`, `erofs`, `eio` (an OSError with that errno, naming the path). `@n` fires on the n-th
hit only (default: the first). Unset (always, outside tests), `hit` costs one dictionary lookup.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

_ERRNOS = {"enospc": errno.ENOSPC, "eacces": errno.EACCES, "erofs": errno.EROFS,
           "eio": errno.EIO}
_parsed: tuple[str, dict[str, tuple[str, int]]] = ("", {})
_hits: dict[str, int] = {}


def _points() -> dict[str, tuple[str, int]]:
    """{point: (action, nth)} from $RBV_FAULTS, parsed again only when the variable changes."""
    global _parsed
    spec = os.environ.get("RBV_FAULTS", "")
    if spec != _parsed[0]:
        points: dict[str, tuple[str, int]] = {}
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, _, action = item.partition("=")
            action, _, nth = action.partition("@")
            if action not in _ERRNOS and action != "kill":
                raise ValueError(f"RBV_FAULTS: unknown action {action!r} in {item!r}")
            points[name.strip()] = (action, int(nth or 1))
        _parsed = (spec, points)
        _hits.clear()
    return _parsed[1]


def hit(point: str, path: str | Path | None = None) -> None:
    """Fail here when $RBV_FAULTS names `point` and this is its chosen hit; else nothing."""
    points = _points()
    if point not in points:
        return
    action, nth = points[point]
    _hits[point] = _hits.get(point, 0) + 1
    if _hits[point] != nth:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    code = _ERRNOS[action]
    raise OSError(code, os.strerror(code), str(path) if path is not None else None)
