"""Process pools whose workers exit when the process that made them dies, even by SIGKILL.

A ProcessPoolExecutor's idle workers wait on their task queue forever once their parent is gone:
a `kill -9` of a run left them orphaned, holding their memory. Every worker of `spawn_pool` first
runs `exit_with_parent`:

- everywhere, a daemon thread waits on the parent's sentinel (`multiprocessing.parent_process()`,
  a pipe that reaches end-of-file when the parent dies) and ends the worker when it fires;
- on Linux, for pools used from the main thread, the kernel also SIGKILLs the worker when its
  parent dies (PR_SET_PDEATHSIG), even while the worker is inside a long call that holds the GIL.
  It is not set for pools used from other threads: the kernel sends the signal when the *thread*
  that started the worker ends, which for a short-lived thread is not the parent's death.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

PR_SET_PDEATHSIG = 1
ORPHANED_EXIT = 70
"""A worker's exit status when it ends because its parent died."""


def in_main_thread() -> bool:
    """Whether this is the main thread (where a pool may ask for PR_SET_PDEATHSIG)."""
    return threading.current_thread() is threading.main_thread()


def spawn_pool(workers: int, initializer: Callable[[], None] | None = None) -> ProcessPoolExecutor:
    """A pool of `workers` spawned processes that exit when this process dies; `initializer`
    (picklable) runs in each worker after that is arranged.

    Workers start on demand from the thread that submits: use the pool from the thread that made
    it (keep one pool per thread kind, see `in_main_thread`)."""
    context = multiprocessing.get_context("spawn")  # fork is unsafe once torch has threads
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                               initargs=(os.getpid(), in_main_thread(), initializer))


def _start_worker(parent_pid: int, kernel_signal: bool,
                  initializer: Callable[[], None] | None) -> None:
    """Worker start-up: `exit_with_parent`, then the pool's own initializer."""
    exit_with_parent(parent_pid, kernel_signal)
    if initializer is not None:
        initializer()


def exit_with_parent(parent_pid: int, kernel_signal: bool = True) -> None:
    """Make this (child) process end when process `parent_pid` ends (see the module's notes)."""
    if kernel_signal and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # no libc prctl: the thread remains
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_after, args=(parent,), name="rbv-parent-watch",
                         daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before any of this was in place
        os._exit(ORPHANED_EXIT)


def _exit_after(parent: multiprocessing.process.BaseProcess) -> None:
    """Block until `parent` ends (its sentinel fires), then end this process at once."""
    parent.join()
    os._exit(ORPHANED_EXIT)
