"""Corrupted copies of a data slice: made in parallel processes, cached on disk by content hash.

An entry is one (clean images, corruption, severity, seed) — the uint8 (N,H,W,3) array that
`corrupt_batch` makes from the slice, image i seeded with `image_seed(seed, i)`. Its key hashes the
clean pixels themselves (not a model or a data config), the corruption, severity, seed and
`library_versions()`, so every model and defense that sees the same images shares one entry, and a
change of imagecorruptions, numpy, scipy, scikit-image, Pillow or OpenCV makes new entries.

Entries are written atomically under a per-entry file lock: two processes never build one entry
twice, and a killed run never leaves half an entry. Each entry ends with its checksum, checked
when it is read: a damaged entry is rebuilt, not used (robustbench_vit.data.cache_entry). Work is
split into chunks of consecutive images (`corrupt_batch(..., start=offset)`), so any number of
workers gives the single-process pixels; the workers exit when the process that started them
dies (robustbench_vit.core.pools).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..core.cache import cache_dir, file_lock
from ..core.cells import stable_hash
from ..core.pools import in_main_thread, spawn_pool
from .cache_entry import PendingEntry, load_entry
from .corruptions import library_versions

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Bumped when the layout or the meaning of a cache entry changes."""
PARALLEL_MIN_PIXELS = 4000 * 32 * 32
"""With `workers=0` (auto), jobs below this many pixels x corruptions stay in this process (about
4,000 32-px or 80 224-px image-corruptions: less work than starting the workers)."""
CHUNKS_PER_WORKER = 4
CHUNK_BYTES = 8 * 2**20
"""At most this many bytes of images per task (~50 224-px images): progress and memory stay fine
grained; small images go in larger chunks, up to the whole job split CHUNKS_PER_WORKER ways."""
MAX_AUTO_WORKERS = 16
"""Auto (`workers=0`) uses at most this many processes."""

_POOLS: dict[tuple[int, bool], ProcessPoolExecutor] = {}
OnDone = Callable[[str, np.ndarray], None]
"""Called with (name, array) when every image of one corruption is done."""
Progress = Callable[[int], None]
"""Called with the number of image-corruptions just finished."""


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
    """Corrupt uint8 (n,H,W,3) images that start at index `start` of the slice (worker task).

    Image i is seeded `image_seed(seed, start + i)`: the pixels `corrupt_batch` gives, without
    torch (workers never import it).
    """
    from .corruptions import corrupt_image, image_seed

    out = np.empty_like(images)
    for i, image in enumerate(images):
        out[i] = corrupt_image(np.ascontiguousarray(image), name, severity,
                               image_seed(seed, start + i))
    return out


def _init_worker() -> None:
    """Worker start-up: one thread each, imagecorruptions imported before the first task."""
    with contextlib.suppress(Exception):
        import cv2

        cv2.setNumThreads(1)
    from .corruptions import load_imagecorruptions

    load_imagecorruptions()


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def resolve_workers(workers: int, n_images: int, n_corruptions: int,
                    pixels_per_image: int = 32 * 32) -> int:
    """Processes to use: `workers` when > 0; else the CPUs (at most 16) for large jobs, else 1."""
    if workers > 0:
        return workers
    if n_images * n_corruptions * pixels_per_image < PARALLEL_MIN_PIXELS:
        return 1
    return max(1, min(available_cpus(), MAX_AUTO_WORKERS))


def chunk_size(n_images: int, n_corruptions: int, n_workers: int, image_bytes: int) -> int:
    """Images per task: the job split CHUNKS_PER_WORKER ways per worker, at most CHUNK_BYTES."""
    even = math.ceil(n_images * n_corruptions / (n_workers * CHUNKS_PER_WORKER))
    return max(1, min(even, n_images, CHUNK_BYTES // max(1, image_bytes)))


def executor(workers: int) -> ProcessPoolExecutor:
    """A pool of `workers` spawned processes, kept for later cells of this process; its workers
    exit when this process dies (robustbench_vit.core.pools)."""
    key = (workers, in_main_thread())  # the kernel's parent-death signal only for the main thread
    if key not in _POOLS:
        _POOLS[key] = spawn_pool(workers, initializer=_init_worker)
    return _POOLS[key]


@atexit.register
def shutdown_pools() -> None:
    """Stop the worker pools (also at interpreter exit)."""
    while _POOLS:
        _POOLS.popitem()[1].shutdown(wait=True, cancel_futures=True)


def corrupt_images(images: np.ndarray, names: Sequence[str], severity: int, seed: int, *,
                   workers: int = 0, on_done: OnDone | None = None, start: int = 0,
                   progress: Progress | None = None,
                   outputs: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Corrupted copies of uint8 (N,H,W,3) `images`, one per name; identical for any `workers`.

    Image i is seeded as image `start + i` of the slice, so a chunk of a slice gets exactly the
    corresponding part of the whole slice's corrupted copy. Results are written into
    `outputs[name]` when given (e.g. a memory map: memory stays bounded by the tasks in flight),
    else into new arrays. `on_done(name, array)` is called as each corruption completes (to write
    it out early); `progress(n)` as images complete.
    """
    names = list(dict.fromkeys(names))
    given = outputs or {}
    arrays = {name: given[name] if name in given else np.empty_like(images) for name in names}
    pixels = int(np.prod(images.shape[1:3])) if images.ndim == 4 else 1
    n_workers = resolve_workers(workers, len(images), len(names), pixels)
    if n_workers == 1 or len(images) == 0:
        for name in names:
            for i in range(len(images)):  # image by image: progress per image
                arrays[name][i] = corrupt_chunk(images[i:i + 1], name, severity, seed,
                                                start + i)[0]
                if progress:
                    progress(1)
            if on_done:
                on_done(name, arrays[name])
        return arrays
    _corrupt_parallel(images, arrays, severity, seed, n_workers, on_done, progress, start)
    return arrays


def _corrupt_parallel(images: np.ndarray, arrays: dict[str, np.ndarray], severity: int,
                      seed: int, n_workers: int, on_done: OnDone | None,
                      progress: Progress | None, start: int = 0) -> None:
    """Chunks of every corruption submitted at once, written into `arrays` as they complete."""
    pool = executor(n_workers)
    size = chunk_size(len(images), len(arrays), n_workers, images[0].nbytes)
    tasks: dict[Future[np.ndarray], tuple[str, int]] = {}
    pending = dict.fromkeys(arrays, 0)
    for name in arrays:  # corruption by corruption: the first ones complete (and save) early
        for s in range(0, len(images), size):
            future = pool.submit(corrupt_chunk, images[s:s + size], name, severity, seed,
                                 start + s)
            tasks[future] = (name, s)
            pending[name] += 1
    try:
        for future in as_completed(tasks):
            name, s = tasks[future]
            part = future.result()
            arrays[name][s:s + len(part)] = part
            del part
            if progress:
                progress(len(images[s:s + size]))
            pending[name] -= 1
            if pending[name] == 0 and on_done:
                on_done(name, arrays[name])
    except BrokenProcessPool:  # a worker died (killed, out of memory): start afresh next time
        for key in [key for key, known in _POOLS.items() if known is pool]:
            del _POOLS[key]
        raise
    finally:
        for future in tasks:
            future.cancel()


def cached_corruptions(images: np.ndarray, names: Sequence[str], severity: int, seed: int, *,
                       workers: int = 0, cache: bool = True, start: int = 0,
                       progress: Progress | None = None) -> dict[str, np.ndarray]:
    """Corrupted copies of `images` per name, read from the cache or generated (and then cached).

    `images` start at image `start` of the slice (see `corrupt_images`). Cached arrays are
    returned memory-mapped (read-only); `progress(n)` counts image-corruptions generated.
    """
    if not cache:
        return corrupt_images(images, names, severity, seed, workers=workers, start=start,
                              progress=progress)
    digest, versions, folder = images_digest(images), library_versions(), corrupted_dir()
    paths = {name: folder / f"{entry_key(digest, name, severity, seed, versions, start)}.npy"
             for name in dict.fromkeys(names)}
    out = {name: arr for name, path in paths.items()
           if (arr := load_entry(path, images.shape)) is not None}
    missing = sorted((n for n in paths if n not in out), key=lambda n: paths[n].name)
    if missing:
        out.update(_build_locked(images, {n: paths[n] for n in missing}, severity, seed, workers,
                                 start, progress))
    return {name: out[name] for name in paths}


def _build_locked(images: np.ndarray, paths: dict[str, Path], severity: int, seed: int,
                  workers: int, start: int = 0,
                  progress: Progress | None = None) -> dict[str, np.ndarray]:
    """Generate the missing entries holding their locks (taken in key order: no deadlock).

    Each entry is generated straight into a memory-mapped temporary .npy beside it (memory stays
    bounded by the tasks in flight, whatever the slice's size), renamed into place when complete.
    """
    with contextlib.ExitStack() as stack:
        for path in paths.values():
            stack.enter_context(file_lock(path.with_suffix(".lock")))
        out = {name: arr for name, path in paths.items()  # built meanwhile (already reported)
               if (arr := load_entry(path, images.shape, report=False)) is not None}
        todo = [name for name in paths if name not in out]
        if todo:
            log.info("corrupting %d images x %d corruptions (severity %d)", len(images),
                     len(todo), severity)
            pending = {name: stack.enter_context(PendingEntry(paths[name], images.shape))
                       for name in todo}

            def save(name: str, array: np.ndarray) -> None:
                out[name] = pending[name].commit()

            corrupt_images(images, todo, severity, seed, workers=workers, on_done=save,
                           start=start, progress=progress,
                           outputs={name: entry.array for name, entry in pending.items()})
    return out
