"""The content-addressed cache folder ($RBV_CACHE, default the user cache dir) and atomic writes."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import faults


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


def temp_beside(target: Path) -> Path:
    """A new empty file `.<name>.<random>.tmp` in `target`'s folder (created), made with the
    umask's permissions like any other file the tool writes (not mkstemp's owner-only 0600)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return tmp


def fsync_file(path: Path) -> None:
    """Flush `path`'s data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: Path) -> None:
    """Flush `folder`'s entries (a rename into it) to the disk; a no-op where the file system
    cannot sync a folder."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path beside `target`; when the block succeeds it is fsynced and renamed onto
    `target`, and the folder fsynced. `target` is either its previous content or the new one,
    never a part. The temporary file is removed when anything fails; an OSError of the write
    names `target` (not the temporary file), e.g. ENOSPC raised by a file object's write."""
    tmp: Path | None = None
    try:
        tmp = temp_beside(target)
        yield tmp
        fsync_file(tmp)
        faults.hit("write", target)
        os.replace(tmp, target)
        tmp = None
        fsync_folder(target.parent)
    except OSError as exc:
        ours = (None, str(tmp), str(target), *map(str, target.parents))
        if exc.errno is None or exc.filename not in ours:
            raise  # not about this write (e.g. a file the block reads)
        raise OSError(exc.errno, exc.strerror, str(target)) from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()


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
