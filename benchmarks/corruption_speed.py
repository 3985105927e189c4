"""Corruption speed per corruption at 224 and 32 px: imagecorruptions 1.1.2, the fork, and ours.

In one process (so the ratios survive a noisy machine), on generated photo-like images, for every
corruption averaged over severities 1-5:

- reference: imagecorruptions 1.1.2's own functions through the compatibility layer, one image
  at a time (`corrupt_image(..., reference=True)`);
- fork: `imagecorruptions-imaug` when `--fork DIR` names a folder it is installed in
  (`pip install --no-deps --target DIR imagecorruptions-imaug`; it shares the module name, so it
  runs in a child process), with its mean absolute difference to the reference in grey levels;
- ours, 1 core: `corrupt_image` (compiled kernels where they exist), checked byte for byte
  against the reference on the same images and seeds;
- ours, all cores: `corrupt_images(..., workers=<cpus>)` on a larger batch, pool warmed first.

Prints a markdown table per size and the total for all 19 x 5 per image (targets at 224 px: total
>= 10x the reference, glass_blur >= 100x, identical output).

    .venv/bin/python benchmarks/corruption_speed.py [--sizes 224 32] [--n 2] [--fork DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from robustbench_vit.data.corruption_cache import available_cpus, corrupt_images
from robustbench_vit.data.corruptions import ALL, SEVERITIES, corrupt_image, load_imagecorruptions

GLASS_TARGET, TOTAL_TARGET = 100.0, 10.0


def photos(n: int, size: int, seed: int = 0) -> np.ndarray:
    """n photo-like uint8 images: smooth colour fields, a disk, a dark block, fine noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    out = []
    for _ in range(n):
        phase = rng.uniform(0, 3, 3)
        img = np.stack([0.5 + 0.4 * np.sin(3 * xx + phase[0]) * np.cos(2 * yy),
                        0.4 + 0.3 * np.sin(5 * yy + phase[1]), 0.3 + 0.5 * xx * yy], -1)
        cx, cy = rng.uniform(0.2, 0.8, 2)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < 0.03] = rng.uniform(0, 1, 3)
        img += rng.normal(0, 0.03, img.shape)
        out.append((np.clip(img, 0, 1) * 255).round().astype(np.uint8))
    return np.stack(out)


@dataclass
class Row:
    """Seconds per image (mean over severities) of one corruption, per implementation."""

    name: str
    reference: float = 0.0
    ours: float = 0.0
    parallel: float = 0.0
    fork: float | None = None
    fork_mad: float | None = None
    identical: bool = True
    mismatches: list[int] = field(default_factory=list)


def time_serial(images: np.ndarray, name: str, reference: bool) -> tuple[float, list[np.ndarray]]:
    """Seconds per image over all severities, and the outputs (for the identity check)."""
    outs = []
    start = time.perf_counter()
    for severity in SEVERITIES:
        for i, image in enumerate(images):
            outs.append(corrupt_image(image, name, severity, 100 * severity + i,
                                      reference=reference))
    return (time.perf_counter() - start) / (len(images) * len(SEVERITIES)), outs


def time_job(images: np.ndarray, workers: int) -> float:
    """Seconds per image for all 19 x 5 as one job per severity (how a sweep runs)."""
    start = time.perf_counter()
    for severity in SEVERITIES:
        corrupt_images(images, list(ALL), severity, seed=severity, workers=workers)
    return (time.perf_counter() - start) / len(images)


def time_parallel(images: np.ndarray, name: str, workers: int) -> float:
    """Seconds per image over all severities with `workers` processes."""
    start = time.perf_counter()
    for severity in SEVERITIES:
        corrupt_images(images, [name], severity, seed=severity, workers=workers)
    return (time.perf_counter() - start) / (len(images) * len(SEVERITIES))


FORK_CHILD = """
import json, sys, time, numpy as np
from imagecorruptions import corrupt
images = np.load(sys.argv[1]); refs = np.load(sys.argv[2]); names = json.loads(sys.argv[3])
out = {}
for name in names:
    mads, start = [], time.perf_counter()
    for s in range(1, 6):
        for i, image in enumerate(images):
            got = np.asarray(corrupt(image, corruption_name=name, severity=s), dtype=np.float64)
            mads.append(float(np.abs(got - refs[name + str(s)][i]).mean()))
    out[name] = [(time.perf_counter() - start) / (5 * len(images)), float(np.mean(mads))]
print(json.dumps(out))
"""


def fork_times(folder: str, images: np.ndarray, refs: dict[str, np.ndarray],
               tmp: str) -> dict[str, list[float]]:
    """{name: [seconds per image, mean abs difference to the reference]} from the fork."""
    np.save(f"{tmp}/images.npy", images)
    np.savez(f"{tmp}/refs.npz", **refs)
    env = {**os.environ, "PYTHONPATH": folder}
    done = subprocess.run([sys.executable, "-c", FORK_CHILD, f"{tmp}/images.npy",
                           f"{tmp}/refs.npz", json.dumps(list(ALL))], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def measure(size: int, n: int, n_parallel: int, workers: int,
            fork: str | None) -> tuple[list[Row], float]:
    """Every corruption at `size` px; and s/image of the 19 x 5 job on all cores."""
    images, many = photos(n, size), photos(n_parallel, size, seed=1)
    corrupt_images(many[:workers], list(ALL), 1, 0, workers=workers)  # start and warm the pool
    rows, refs = [], {}
    for name in ALL:
        corrupt_image(images[0][:16, :16], name, 1, 0)  # compile / first-use check: not timed
        row = Row(name)
        row.reference, expected = time_serial(images, name, reference=True)
        row.ours, got = time_serial(images, name, reference=False)
        row.mismatches = [i for i, (a, b) in enumerate(zip(expected, got, strict=True))
                          if not np.array_equal(a, b)]
        row.identical = not row.mismatches
        row.parallel = time_parallel(many, name, workers)
        for s in SEVERITIES:
            refs[name + str(s)] = np.stack(expected[(s - 1) * n:s * n]).astype(np.float64)
        rows.append(row)
        print(f"  {size}px {name}: ref {row.reference:.4f}s ours {row.ours:.4f}s "
              f"x{row.reference / row.ours:.1f}", file=sys.stderr, flush=True)
    if fork:
        with tempfile.TemporaryDirectory() as tmp:
            measured = fork_times(fork, images, refs, tmp)
        for row in rows:
            row.fork, row.fork_mad = measured[row.name]
    return rows, time_job(many, workers)


def table(size: int, rows: list[Row], workers: int, job: float) -> str:
    """The markdown table of one size, with the 19 x 5 total."""
    def rate(seconds: float | None) -> str:
        return "—" if not seconds else f"{1 / seconds:,.1f}"

    lines = [f"#### {size}×{size} px (images/s, mean over severities 1–5)", "",
             "| corruption | imagecorruptions 1.1.2 | fork (MAD) | ours, 1 core | "
             f"ours, {workers} cores | speed-up 1 / {workers} cores | identical |",
             "|---|---:|---:|---:|---:|---:|:---:|"]
    for r in rows:
        fork = "—" if r.fork is None else f"{rate(r.fork)} ({r.fork_mad:.1f})"
        lines.append(f"| {r.name} | {rate(r.reference)} | {fork} | {rate(r.ours)} | "
                     f"{rate(r.parallel)} | {r.reference / r.ours:.1f}× / "
                     f"{r.reference / r.parallel:.1f}× | {'yes' if r.identical else 'NO'} |")
    ref, ours, par = (sum(getattr(r, a) for r in rows) * len(SEVERITIES)
                      for a in ("reference", "ours", "parallel"))
    fork_total = (sum(r.fork or 0 for r in rows) * len(SEVERITIES)
                  if all(r.fork for r in rows) else None)
    lines.append(f"| **all 19 × 5, s/image** | {ref:.2f} s | "
                 f"{'—' if fork_total is None else f'{fork_total:.2f} s'} | {ours:.2f} s | "
                 f"{par:.2f} s | {ref / ours:.1f}× / {ref / par:.1f}× | "
                 f"{'yes' if all(r.identical for r in rows) else 'NO'} |")
    lines += ["", f"All 19 × 5 as one job per severity on {workers} cores (as a sweep runs): "
              f"{job:.3f} s/image, {ref / job:.1f}× the reference."]
    return "\n".join(lines)


def main() -> None:
    """Measure and print the tables; exit 1 if any output differs from the reference."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 32])
    parser.add_argument("--n", type=int, default=2, help="images per severity at 224 px "
                        "(x 224^2 / size^2 at smaller sizes, at most 64)")
    parser.add_argument("--workers", type=int, default=available_cpus())
    parser.add_argument("--fork", default=os.environ.get("RBV_FORK_DIR"),
                        help="folder with imagecorruptions-imaug installed (--target)")
    args = parser.parse_args()
    load_imagecorruptions()
    ok = True
    for size in args.sizes:
        n = min(64, max(args.n, args.n * 224 * 224 // (size * size)))
        rows, job = measure(size, n, 4 * args.workers * n, args.workers, args.fork)
        print(table(size, rows, args.workers, job) + "\n", flush=True)
        ok &= all(r.identical for r in rows)
        if size == 224:
            glass = next(r for r in rows if r.name == "glass_blur")
            total = sum(r.reference for r in rows) * len(SEVERITIES) / min(
                job, sum(r.ours for r in rows) * len(SEVERITIES))
            print(f"targets at 224 px: glass_blur {glass.reference / glass.ours:.0f}x on 1 core "
                  f"(target {GLASS_TARGET:.0f}x), all 19 x 5 {total:.1f}x best "
                  f"(target {TOTAL_TARGET:.0f}x)\n", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
