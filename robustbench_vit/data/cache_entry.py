"""One corrupted-images cache entry on disk: a uint8 .npy file that ends with its own checksum.

Layout: the .npy header and pixels as numpy writes them, then a footer of FOOTER_BYTES bytes:
FOOTER_MAGIC and the SHA-256 of every byte before it. numpy ignores bytes after an array, so
`np.load` reads an entry as before. An entry is written as a memory-mapped temporary file beside
it (`PendingEntry`); its footer is appended, the file fsynced and renamed into place: the pixels
and their checksum appear together, or not at all.

`load_entry` checks the checksum once per process and file (its inode, size and mtime): an entry
that fails it, has none (written by an older version) or holds another shape is logged and
rebuilt, never used. `benchmarks/cache_checksum.py` measures what the check costs.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from ..core import faults
from ..core.cache import fsync_folder, temp_beside

log = logging.getLogger(__name__)

FOOTER_MAGIC = b"\x93RBVSUM\x01"
"""Starts the footer; the last byte is the footer's version (1: SHA-256)."""
FOOTER_BYTES = len(FOOTER_MAGIC) + hashlib.sha256().digest_size
READ_BLOCK = 8 * 2**20
_VERIFIED: set[tuple[str, int, int, int, int]] = set()
"""(path, device, inode, size, mtime) of the entries whose checksum held in this process."""


def file_digest(path: Path, end: int) -> bytes:
    """SHA-256 of the first `end` bytes of `path`."""
    digest, block = hashlib.sha256(), bytearray(min(READ_BLOCK, max(end, 1)))
    view = memoryview(block)
    with open(path, "rb", buffering=0) as handle:
        left = end
        while left > 0:
            got = handle.readinto(view[:min(left, len(block))])
            if not got:
                raise OSError(errno.EIO, f"ends {left} bytes early", str(path))
            digest.update(view[:got])
            left -= got
    return digest.digest()


def _identity(path: Path) -> tuple[str, int, int, int, int]:
    stat = path.stat()
    return str(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def checksum_problem(path: Path) -> str | None:
    """Why the entry at `path` cannot be trusted ("fails its checksum", ...), or None."""
    identity = _identity(path)
    if identity in _VERIFIED:
        return None
    size = identity[3]
    with open(path, "rb") as handle:
        handle.seek(max(0, size - FOOTER_BYTES))
        footer = handle.read(FOOTER_BYTES)
    if len(footer) < FOOTER_BYTES or not footer.startswith(FOOTER_MAGIC):
        return "has no checksum (written by an older version)"
    if file_digest(path, size - FOOTER_BYTES) != footer[len(FOOTER_MAGIC):]:
        return "fails its checksum (its bytes changed after it was written)"
    _VERIFIED.add(identity)
    return None


def load_entry(path: Path, shape: tuple[int, ...], report: bool = True) -> np.ndarray | None:
    """The cached array at `path` (memory-mapped, read-only), or None when absent, unreadable,
    not a uint8 `shape` array or not matching its checksum (logged when `report`)."""
    if not path.is_file():
        return None
    problem: str | None
    try:
        array = np.load(path, mmap_mode="r")
        if array.shape != tuple(shape) or array.dtype != np.uint8:
            problem = f"holds {array.dtype} {array.shape}, expected uint8 {tuple(shape)}"
        else:
            problem = checksum_problem(path)
    except (OSError, ValueError) as exc:
        problem = f"is unreadable ({exc})"
    if problem is None:
        return array
    if report:
        log.warning("corrupted-images cache entry %s %s: rebuilding", path, problem)
    return None


class PendingEntry:
    """A cache entry being written: a memory-mapped temporary .npy (`array`), completed with
    its checksum and renamed onto `path` by `commit`; removed if the block ends before that."""

    def __init__(self, path: Path, shape: tuple[int, ...]):
        self.path, self.shape = path, tuple(shape)
        self.tmp: Path | None = None
        self.array: np.ndarray = np.empty(0, np.uint8)
        self.data_end = 0

    def __enter__(self) -> PendingEntry:
        self.tmp = temp_beside(self.path)
        try:
            self.array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.uint8,
                                                   shape=self.shape)
            self.data_end = self.tmp.stat().st_size
            self._reserve()
        except OSError as exc:
            self.__exit__()
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc
        return self

    def _reserve(self) -> None:
        """Allocate the file's blocks (footer included) now: a full disk is an ENOSPC here, not
        a SIGBUS when a page of the memory map is first written."""
        assert self.tmp is not None
        if not hasattr(os, "posix_fallocate"):  # macOS
            return
        fd = os.open(self.tmp, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, self.data_end + FOOTER_BYTES)
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):  # no fallocate here: go on
                raise
        finally:
            os.close(fd)

    def commit(self) -> np.ndarray:
        """Flush, append the checksum, fsync and rename into place; the entry, memory-mapped
        read-only."""
        assert self.tmp is not None
        if isinstance(self.array, np.memmap):
            self.array.flush()
        self.array = np.empty(0, np.uint8)  # drop the writable map before the rename
        try:
            self._append_checksum()
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, str(self.path)) from exc
        faults.hit("cache.entry", self.path)
        os.replace(self.tmp, self.path)
        self.tmp = None
        fsync_folder(self.path.parent)
        _VERIFIED.add(_identity(self.path))  # its checksum was just made from these bytes
        entry = load_entry(self.path, self.shape)
        if entry is None:
            raise OSError(f"corrupted-images cache entry {self.path} unreadable after writing")
        return entry

    def _append_checksum(self) -> None:
        """Write the footer after the pixels (the file ends there) and fsync the file."""
        assert self.tmp is not None
        footer = FOOTER_MAGIC + file_digest(self.tmp, self.data_end)
        fd = os.open(self.tmp, os.O_RDWR)
        try:
            os.pwrite(fd, footer, self.data_end)
            os.ftruncate(fd, self.data_end + FOOTER_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)

    def __exit__(self, *exc: object) -> None:
        self.array = np.empty(0, np.uint8)
        if self.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                self.tmp.unlink()
