"""Cells shared between concurrent runs on one results folder.

A run computes a cell only once it holds the cell's lease in the results database; a heartbeat
thread renews the run's leases while it lives. Cells another live run holds are skipped and
looked at again later: finished there, they count as "done by another run"; if that run died
(its process is gone from this host, or its heartbeat stopped for `lease_seconds`), they are
taken over and computed here. The same holds for several Ray drivers, or machines, whose results
folder is one database.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType

from ..core.cells import Cell
from ..results.store import ResultStore, StoreError

log = logging.getLogger(__name__)


class CellQueue:
    """The pending cells of one run, handed out once leased; a context manager that beats the
    heartbeat while open and drops the run's remaining leases when closed."""

    def __init__(self, store: ResultStore, cells: list[Cell], *, lease_seconds: float = 60.0,
                 poll_seconds: float | None = None):
        self.store = store
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = max(0.2, lease_seconds / 6)
        self.poll_seconds = poll_seconds if poll_seconds is not None else min(
            2.0, self.heartbeat_seconds)
        self._todo: list[Cell] = list(cells)
        self._seen_holder: dict[str, str] = {}
        self.elsewhere: list[Cell] = []
        """Cells finished by another run while this one ran."""
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> CellQueue:
        self._beat = threading.Thread(target=self._heartbeat, name="rbv-lease-heartbeat",
                                      daemon=True)
        self._beat.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        try:
            self.store.release()
        except StoreError as error:  # the leases go stale on their own
            log.warning("could not release this run's leases: %s", error)

    def _heartbeat(self) -> None:
        beat = self.store.sibling()  # its own connection: sqlite3 connections are per thread
        try:
            while not self._stop.wait(self.heartbeat_seconds):
                try:
                    beat.heartbeat()
                except StoreError as error:
                    log.warning("lease heartbeat failed (will retry): %s", error)
        finally:
            beat.close()

    @property
    def waiting(self) -> int:
        """Cells not handed out yet (held by other runs, or not looked at)."""
        return len(self._todo)

    def take(self, limit: int | None = None) -> list[Cell]:
        """Lease and return up to `limit` (default: all) of the cells that are free now, in
        suite order; cells finished elsewhere leave the queue; held ones stay."""
        taken: list[Cell] = []
        keep: list[Cell] = []
        for cell in self._todo:
            if limit is not None and len(taken) >= limit:
                keep.append(cell)
                continue
            claim = self.store.claim(cell.key, lease_seconds=self.lease_seconds,
                                     finished_by=self._seen_holder.get(cell.key))
            if claim == "mine":
                taken.append(cell)
            elif claim == "done":
                self.elsewhere.append(cell)
            else:
                holder = self.store.holder(cell.key)
                if holder is not None:
                    self._seen_holder[cell.key] = holder.owner
                keep.append(cell)
        self._todo = keep
        return taken

    def next(self) -> Cell | None:
        """The next cell to compute here, waiting while every remaining one is held by another
        live run; None when none is left."""
        while self._todo:
            taken = self.take(limit=1)
            if taken:
                return taken[0]
            if self._todo:
                time.sleep(self.poll_seconds)
        return None
