"""Ray runner: one task per cell (or per chunk of a cell), streamed back with `ray.wait`.

The driver commits each finished cell to the store at once and stays its only writer. Workers get
plain `Cell`s, the cache folder and a thread count; they build models themselves (from the shared
content-addressed cache that `run.prepare` filled). A task whose worker dies is retried by Ray
(`max_retries`); a cell that raises comes back as an error row. Ray is imported only here, lazily.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ...core.cache import cache_dir
from ...core.cells import Cell
from ...core.errors import RbvError
from ...core.records import CellResult, Span
from ...results.store import ResultStore
from ..chunks import chunk_spans, merge_chunks
from ..claims import CellQueue
from ..evaluate import cell_size
from .base import Progress, RunSummary, report_elsewhere

log = logging.getLogger(__name__)


class RayUnavailable(RbvError):
    """The ray backend was asked for but Ray is not installed."""

    exit_code = 2


@dataclass(frozen=True, kw_only=True)
class RayOptions:
    """The `runner:` fields the Ray backend reads (see spec.RunnerSpec)."""

    address: str | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_retries: int = 2
    chunk_size: int | None = None
    cache_dir: str | None = None
    lease_seconds: float = 60.0
    connect_timeout: float = 15.0

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> RayOptions:
        """Options from a runner section; unknown keys (backend) and None values are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in options.items() if k in known and v is not None})


def import_ray() -> Any:
    """The ray module, or RayUnavailable (exit 2) with the install command."""
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable("the ray backend needs Ray: pip install 'robustbench_vit[ray]' "
                             "(in this checkout: .venv/bin/pip install -e '.[ray]')") from exc
    return ray


class RayConnectError(RbvError):
    """Nothing answers at the Ray address the suite or the command line gave."""

    exit_code = 2


def probe(address: str, timeout: float) -> None:
    """Raise RayConnectError unless a TCP connection to `address`'s host:port opens within
    `timeout` seconds (`auto` and `local` are left to Ray: it finds them on this machine)."""
    if address in ("auto", "local"):
        return
    where = address.split("://", 1)[-1]
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise RayConnectError(f"Ray address {address!r} is not host:port (nor ray://host:port, "
                              "auto or local)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        cause = exc.strerror or str(exc) or type(exc).__name__
        raise RayConnectError(f"nothing answers at Ray address {address} ({cause}, waited up to "
                              f"{timeout:g}s): start the cluster there (`ray start --head`), "
                              "or fix runner.address / --address") from None


def connect(ray: Any, address: str | None, timeout: float = 15.0) -> bool:
    """Connect to `address` (checked to answer within `timeout` seconds first), or start a
    quiet local cluster; True when this call started Ray."""
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline: no usage report
    if address:
        probe(address, timeout)
        # bounds Ray's own wait for the cluster's control service (about a second per try)
        os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(max(1, int(timeout))))
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR, configure_logging=True)
    except (ConnectionError, TimeoutError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RayConnectError(f"cannot connect to Ray at {address or 'a local cluster'}: "
                              f"{first}") from None
    return True


def run_task(cell: Cell, span: Span | None, threads: int, cache: str) -> CellResult:
    """Ray task body: evaluate one cell (or one chunk of it) with `threads` torch threads."""
    import torch

    from ..evaluate import evaluate_cell

    os.environ["RBV_CACHE"] = cache  # the driver's cache: zoo checkpoints are not rebuilt here
    torch.set_num_threads(threads)  # without it each worker spawns one OpenMP thread per core
    return evaluate_cell(cell, span=span)


class RayRunner:
    """Runs pending cells as Ray tasks; commits each cell in the driver as soon as it is done."""

    def __init__(self, options: Mapping[str, Any] | None = None):
        self.options = RayOptions.from_mapping(options or {})
        import_ray()

    def run(self, cells: list[Cell], store: ResultStore, progress: Progress) -> RunSummary:
        start = time.perf_counter()
        pending = store.pending(cells)
        summary = RunSummary(total=len(cells), already_done=len(cells) - len(pending))
        progress.run_started(len(pending), summary.already_done)
        if pending:
            ray = import_ray()
            started = connect(ray, self.options.address, self.options.connect_timeout)
            try:
                with CellQueue(store, pending, lease_seconds=self.options.lease_seconds) as queue:
                    self._stream(ray, queue, store, progress, summary)
            finally:
                if started:
                    ray.shutdown()
        summary.seconds = time.perf_counter() - start
        return summary

    def _stream(self, ray: Any, queue: CellQueue, store: ResultStore, progress: Progress,
                summary: RunSummary) -> None:
        """Submit the cells this run leases (more as other runs' leases lapse), commit each as
        its tasks finish."""
        opts = self.options
        task = ray.remote(run_task).options(num_cpus=opts.num_cpus, num_gpus=opts.num_gpus,
                                            max_retries=opts.max_retries, retry_exceptions=False)
        threads, cache = max(1, int(opts.num_cpus)), opts.cache_dir or str(cache_dir())
        owner: dict[Any, tuple[Cell, int]] = {}
        parts: dict[str, list[CellResult | None]] = {}

        def submit(cells: list[Cell]) -> None:
            for cell in cells:
                chunks = chunk_spans(cell, opts.chunk_size)
                spans: list[Span | None] = list(chunks) if chunks else [None]
                parts[cell.key] = [None] * len(spans)
                for i, span in enumerate(spans):
                    owner[task.remote(cell, span, threads, cache)] = (cell, i)

        submit(queue.take())
        seen = report_elsewhere(queue, 0, summary, progress)
        try:
            while owner or queue.waiting:
                if owner:
                    done, _ = ray.wait(list(owner), num_returns=1, timeout=queue.poll_seconds)
                else:  # only cells other runs hold: wait for them to finish or lapse
                    done = []
                    time.sleep(queue.poll_seconds)
                for ref in done:
                    cell, i = owner.pop(ref)
                    slots = parts[cell.key]
                    slots[i] = fetch(ray, ref, cell)
                    if all(s is not None for s in slots):
                        finished = [s for s in slots if s is not None]
                        result = finished[0] if len(finished) == 1 else merge_chunks(cell, finished)
                        self._finish(cell, result, store, progress, summary)
                if queue.waiting:
                    submit(queue.take())
                seen = report_elsewhere(queue, seen, summary, progress)
        except KeyboardInterrupt:
            log.warning("interrupted: cancelling %d outstanding Ray tasks", len(owner))
            for ref in owner:
                ray.cancel(ref, force=True)
            raise

    @staticmethod
    def _finish(cell: Cell, result: CellResult, store: ResultStore, progress: Progress,
                summary: RunSummary) -> None:
        store.commit(cell, result)  # committed before it is reported done
        summary.record(cell, result)
        size = cell_size(cell)
        progress.cell_started(cell, size)  # per-cell progress is coarse: whole cells at a time
        progress.cell_advanced(size)
        progress.cell_finished(cell, result)


def fetch(ray: Any, ref: Any, cell: Cell) -> CellResult:
    """A task's result; a task that failed for good (retries spent) becomes an error result."""
    try:
        return ray.get(ref)
    except Exception as exc:  # noqa: BLE001 - worker died too often, or could not run the task
        log.debug("task of %s failed", cell.key, exc_info=True)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return CellResult(cell_key=cell.key, status="error", error=f"{type(exc).__name__}: {first}")
