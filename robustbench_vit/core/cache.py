"""The content-addressed cache folder ($RBV_CACHE, default the user cache dir) and atomic writes."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def cache_dir(*parts: str) -> Path:
    """$RBV_CACHE (or ~/.cache/robustbench_vit) joined with `parts`, created."""
    root = os.environ.get("RBV_CACHE")
    if root:
        base = Path(root).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "robustbench_vit"
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created), so two processes never build one entry twice."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_once(path: Path, build: Callable[[], None]) -> Path:
    """`path`, after `build()` wrote it unless it exists: under a lock on `path`.lock, checked
    again once the lock is held, so concurrent processes build one entry once."""
    if path.is_file():
        return path
    with file_lock(path.with_suffix(".lock")):
        if not path.is_file():  # not built by another process while we waited
            build()
    return path


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path in the target's folder, renamed onto `target` when the block succeeds."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(path: Path, module: Any, meta: dict[str, Any]) -> None:
    """Write `module`'s weights (safetensors) and its training record (JSON beside it), atomically.

    The JSON goes first: a checkpoint file present means its record is too.
    """
    from safetensors.torch import save_file

    record = {**meta, "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with atomic_path(path.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
