"""Corrupted copies of a data slice: made in parallel processes, cached on disk by content hash.

An entry is one (clean images, corruption, severity, seed) — the uint8 (N,H,W,3) array that
`corrupt_batch` makes from the slice, image i seeded with `image_seed(seed, i)`. Its key hashes the
clean pixels themselves (not a model or a data config), the corruption, severity, seed and
`library_versions()`, so every model and defense that sees the same images shares one entry, and a
change of imagecorruptions, numpy, scipy, scikit-image, Pillow or OpenCV makes new entries.

Entries are written atomically under a per-entry file lock: two processes never build one entry
twice, and a killed run never leaves half an entry. Work is split into chunks of consecutive images
(`corrupt_batch(..., start=offset)`), so any number of workers gives the single-process pixels.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import math
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..core.cache import atomic_path, cache_dir, file_lock
from ..core.cells import stable_hash
from .corruptions import library_versions

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Bumped when the layout or the meaning of a cache entry changes."""
PARALLEL_MIN_IMAGES = 4000
"""With `workers=0` (auto), fewer (images x corruptions) than this stay in this process."""
CHUNKS_PER_WORKER = 4
MAX_AUTO_WORKERS = 16
"""Auto (`workers=0`) uses at most this many processes (each imports torch: ~0.3 GB)."""

_POOLS: dict[int, ProcessPoolExecutor] = {}
OnDone = Callable[[str, np.ndarray], None]


def corrupted_dir() -> Path:
    """The folder of cached corrupted images ($RBV_CACHE/corrupted)."""
    return cache_dir("corrupted")


def images_digest(images: np.ndarray) -> str:
    """Hash of a uint8 image array's shape and pixels: the identity of a data slice."""
    digest = hashlib.sha256(repr((images.dtype.str, images.shape)).encode())
    digest.update(np.ascontiguousarray(images).data)
    return digest.hexdigest()[:32]


def entry_key(digest: str, name: str, severity: int, seed: int,
              versions: dict[str, str] | None = None, start: int = 0) -> str:
    """The cache key of one corrupted copy of the images with `digest` (image 0 of them being
    image `start` of the cell's slice: it sets the per-image seeds)."""
    payload = {"format": CACHE_FORMAT, "images": digest, "corruption": name,
               "severity": severity, "seed": seed,
               "versions": library_versions() if versions is None else versions}
    if start:
        payload["start"] = start
    return stable_hash(payload, 32)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N,3,H,W) floats in [0,1] -> (N,H,W,3) uint8, rounded as `corrupt_batch` does."""
    import torch

    images = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return images.permute(0, 2, 3, 1).cpu().numpy()


def corrupt_chunk(images: np.ndarray, name: str, severity: int, seed: int,
                  start: int) -> np.ndarray:
    """Corrupt uint8 (n,H,W,3) images that start at index `start` of the slice (worker task)."""
    import torch

    from .corruptions import corrupt_batch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
    return to_uint8(corrupt_batch(x, name, severity, seed, start=start))


def _init_worker() -> None:
    """Worker start-up: one thread each, imagecorruptions imported before the first task."""
    import torch

    from .corruptions import load_imagecorruptions

    torch.set_num_threads(1)
    with contextlib.suppress(Exception):
        import cv2

        cv2.setNumThreads(1)
    load_imagecorruptions()


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def resolve_workers(workers: int, n_images: int, n_corruptions: int) -> int:
    """Processes to use: `workers` when > 0; else the CPUs (at most 16) for large jobs, else 1."""
    if workers > 0:
        return workers
    if n_images * n_corruptions < PARALLEL_MIN_IMAGES:
        return 1
    return max(1, min(available_cpus(), MAX_AUTO_WORKERS))


def executor(workers: int) -> ProcessPoolExecutor:
    """A pool of `workers` spawned processes, kept for later cells of this process."""
    if workers not in _POOLS:
        context = multiprocessing.get_context("spawn")  # fork is unsafe once torch has threads
        _POOLS[workers] = ProcessPoolExecutor(workers, mp_context=context,
                                              initializer=_init_worker)
    return _POOLS[workers]


@atexit.register
def shutdown_pools() -> None:
    """Stop the worker pools (also at interpreter exit)."""
    while _POOLS:
        _POOLS.popitem()[1].shutdown(wait=True, cancel_futures=True)


def corrupt_images(images: np.ndarray, names: Sequence[str], severity: int, seed: int, *,
                   workers: int = 0, on_done: OnDone | None = None,
                   start: int = 0) -> dict[str, np.ndarray]:
    """Corrupted copies of uint8 (N,H,W,3) `images`, one per name; identical for any `workers`.

    Image i is seeded as image `start + i` of the slice, so a chunk of a slice gets exactly the
    corresponding part of the whole slice's corrupted copy. `on_done(name, array)` is called as
    each corruption completes (to write it out early).
    """
    names = list(dict.fromkeys(names))
    n_workers = resolve_workers(workers, len(images), len(names))
    if n_workers == 1 or len(images) == 0:
        out = {}
        for name in names:
            out[name] = corrupt_chunk(images, name, severity, seed, start)
            if on_done:
                on_done(name, out[name])
        return out
    return _corrupt_parallel(images, names, severity, seed, n_workers, on_done, start)


def _corrupt_parallel(images: np.ndarray, names: list[str], severity: int, seed: int,
                      n_workers: int, on_done: OnDone | None,
                      start: int = 0) -> dict[str, np.ndarray]:
    """Chunks of every corruption submitted at once; each corruption assembled when complete."""
    pool = executor(n_workers)
    size = max(1, math.ceil(len(images) * len(names) / (n_workers * CHUNKS_PER_WORKER)))
    size = min(size, len(images))
    starts = range(0, len(images), size)
    futures: dict[str, list[Future[np.ndarray]]] = {
        name: [pool.submit(corrupt_chunk, images[s:s + size], name, severity, seed, start + s)
               for s in starts] for name in names}
    out = {}
    try:
        for name, parts in futures.items():
            out[name] = np.concatenate([f.result() for f in parts])
            if on_done:
                on_done(name, out[name])
    except BrokenProcessPool:
        _POOLS.pop(n_workers, None)  # a worker died (killed, out of memory): start afresh next time
        raise
    finally:
        for parts in futures.values():
            for f in parts:
                f.cancel()
    return out


def cached_corruptions(images: np.ndarray, names: Sequence[str], severity: int, seed: int, *,
                       workers: int = 0, cache: bool = True,
                       start: int = 0) -> dict[str, np.ndarray]:
    """Corrupted copies of `images` per name, read from the cache or generated (and then cached).

    `images` start at image `start` of the slice (see `corrupt_images`). Cached arrays are
    returned memory-mapped (read-only).
    """
    if not cache:
        return corrupt_images(images, names, severity, seed, workers=workers, start=start)
    digest, versions, folder = images_digest(images), library_versions(), corrupted_dir()
    paths = {name: folder / f"{entry_key(digest, name, severity, seed, versions, start)}.npy"
             for name in dict.fromkeys(names)}
    out = {name: arr for name, path in paths.items()
           if (arr := load_entry(path, images.shape)) is not None}
    missing = sorted((n for n in paths if n not in out), key=lambda n: paths[n].name)
    if missing:
        out.update(_build_locked(images, {n: paths[n] for n in missing}, severity, seed, workers,
                                 start))
    return {name: out[name] for name in paths}


def _build_locked(images: np.ndarray, paths: dict[str, Path], severity: int, seed: int,
                  workers: int, start: int = 0) -> dict[str, np.ndarray]:
    """Generate the missing entries holding their locks (taken in key order: no deadlock)."""
    with contextlib.ExitStack() as stack:
        for path in paths.values():
            stack.enter_context(file_lock(path.with_suffix(".lock")))
        out = {name: arr for name, path in paths.items()
               if (arr := load_entry(path, images.shape)) is not None}  # built meanwhile
        todo = [name for name in paths if name not in out]
        if todo:
            log.info("corrupting %d images x %d corruptions (severity %d)", len(images),
                     len(todo), severity)

            def save(name: str, array: np.ndarray) -> None:
                save_entry(paths[name], array)

            out.update(corrupt_images(images, todo, severity, seed, workers=workers,
                                      on_done=save, start=start))
    return out


def load_entry(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached array at `path` (memory-mapped), or None when absent or not shaped `shape`."""
    if not path.is_file():
        return None
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        log.warning("unreadable corrupted-images cache entry %s (%s): rebuilding", path, exc)
        return None
    if array.shape != tuple(shape) or array.dtype != np.uint8:
        log.warning("cache entry %s holds %s %s, expected uint8 %s: rebuilding", path,
                    array.dtype, array.shape, tuple(shape))
        return None
    return array


def save_entry(path: Path, array: np.ndarray) -> None:
    """Write `array` to `path` atomically (.npy)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array, dtype=np.uint8))
