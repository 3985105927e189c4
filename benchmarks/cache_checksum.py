"""Cost of checking a corrupted-images cache entry's checksum when it is loaded.

In one process, on one entry of N 224-px images (uint8, 1000 x 224 x 224 x 3 = 150 MB by default,
written by `PendingEntry` into a temporary folder, so it sits in the page cache as a just-built or
recently used entry does), alternating repetitions time:

- plain: `np.load(mmap_mode="r")` and the shape check (what loading did before checksums), then one
  read of every pixel in batches as the corruption scenario does (`array_batches` copies each);
- checked: `load_entry` with this process's record of checked entries cleared (the first load of
  an entry in a run: SHA-256 over the file), then the same read;
- again: `load_entry` of an entry already checked in this process (a stat), then the same read.

It reports the medians and the ratios checked / plain and again / plain; also the checksum alone
against a bare memory-map open (no pixel read).

    .venv/bin/python benchmarks/cache_checksum.py [--n 1000] [--reps 5] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from robustbench_vit.data import cache_entry
from robustbench_vit.data.cache_entry import PendingEntry, checksum_problem, load_entry

BATCH = 100


def write_entry(folder: Path, n: int) -> tuple[Path, tuple[int, ...]]:
    shape = (n, 224, 224, 3)
    path = folder / "entry.npy"
    rng = np.random.default_rng(0)
    with PendingEntry(path, shape) as entry:
        for i in range(0, n, BATCH):
            entry.array[i:i + BATCH] = rng.integers(0, 256, entry.array[i:i + BATCH].shape,
                                                    dtype=np.uint8)
        entry.commit()
    return path, shape


def read_pixels(array: np.ndarray) -> int:
    """One pass over every pixel, batch by batch, as the scenario reads an entry."""
    total = 0
    for i in range(0, len(array), BATCH):
        total += int(np.array(array[i:i + BATCH])[:, 0, 0, 0].sum())
    return total


def timed(step: Callable[[], object]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--dir", default=None, help="folder for the entry (default: $TMPDIR)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path, shape = write_entry(Path(tmp), args.n)
        size = path.stat().st_size

        def plain() -> None:
            array = np.load(path, mmap_mode="r")
            assert array.shape == shape and array.dtype == np.uint8
            read_pixels(array)

        def checked() -> None:
            cache_entry._VERIFIED.clear()
            array = load_entry(path, shape)
            assert array is not None
            read_pixels(array)

        def again() -> None:
            array = load_entry(path, shape)
            assert array is not None
            read_pixels(array)

        def checksum_only() -> None:
            cache_entry._VERIFIED.clear()
            assert checksum_problem(path) is None

        def open_only() -> None:
            np.load(path, mmap_mode="r")

        steps = {"plain": plain, "checked": checked, "again": again,
                 "checksum alone": checksum_only, "mmap open alone": open_only}
        times: dict[str, list[float]] = {name: [] for name in steps}
        plain()  # warm the page cache
        for _ in range(args.reps):
            for name, step in steps.items():
                times[name].append(timed(step))
    med = {name: statistics.median(values) for name, values in times.items()}
    print(f"entry {shape}, {size / 2**20:.0f} MiB; medians of {args.reps}:")
    for name, value in med.items():
        print(f"  {name:16s} {value * 1000:9.2f} ms")
    print(f"checked / plain: {med['checked'] / med['plain']:.2f}   "
          f"again / plain: {med['again'] / med['plain']:.3f}   "
          f"checksum alone: {int(np.prod(shape)) / med['checksum alone'] / 1e9:.2f} GB/s, "
          f"{med['checksum alone'] / med['mmap open alone']:.0f}x a bare memory-map open")


if __name__ == "__main__":
    main()
