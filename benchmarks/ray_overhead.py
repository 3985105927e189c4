"""Ray runner overhead: one suite on the local runner and on a local Ray cluster, in one process.

Warms every cache first (zoo checkpoints, training defenses, corrupted images, crafted transfer
examples) with one local run into a throw-away results folder, then times a local run and a Ray run
into separate fresh results folders, checks they stored the same numbers, and prints both wall
times, their ratio (target <= 1.3 on 2 cores), Ray's fixed start-up costs, and the per-task
scheduling overhead measured on no-op tasks.

    .venv/bin/python benchmarks/ray_overhead.py [--suite suites/quickstart.yaml] [--tasks 500]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from robustbench_vit import load_suite
from robustbench_vit.execution.run import run_suite
from robustbench_vit.execution.runners.ray import connect, import_ray
from robustbench_vit.results.store import ResultStore


def timed_run(suite: object, results: Path, backend: str) -> float:
    """Wall seconds of one run of `suite` into `results` (fresh) on `backend`."""
    start = time.perf_counter()
    summary = run_suite(suite, results, backend=backend)  # type: ignore[arg-type]
    if summary.errors:
        print(f"  {backend}: {len(summary.errors)} cells failed, e.g. {summary.errors[0]}")
    return time.perf_counter() - start


def stored_values(results: Path) -> dict[tuple[str, str, str, str], float]:
    """(cell_key, scenario, params, metric) -> value of every ok row."""
    with ResultStore(results) as store:
        df = store.frame()
    df = df[df["status"] == "ok"]
    keys = zip(df["cell_key"], df["scenario"], df["params"], df["metric"], strict=True)
    return dict(zip(keys, df["value"], strict=True))


def task_overhead_ms(n_tasks: int) -> tuple[float, float, float]:
    """(ray.init seconds, first no-op round trip ms, per-task ms over `n_tasks` no-op tasks)."""
    ray = import_ray()
    start = time.perf_counter()
    connect(ray, None)
    init = time.perf_counter() - start

    @ray.remote(num_cpus=1)
    def noop(i: int) -> int:
        return i

    start = time.perf_counter()
    ray.get(noop.remote(0))
    first = (time.perf_counter() - start) * 1000
    per_task = []
    for _ in range(3):
        start = time.perf_counter()
        ray.get([noop.remote(i) for i in range(n_tasks)])
        per_task.append((time.perf_counter() - start) * 1000 / n_tasks)
    ray.shutdown()
    return init, first, statistics.median(per_task)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="suites/quickstart.yaml")
    parser.add_argument("--tasks", type=int, default=500, help="no-op tasks for the per-task cost")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    suite = load_suite(args.suite)
    n_cells = len(suite.cells())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        run_suite(suite, root / "warm", backend="local")
        print(f"warm-up local run (fills every cache): {time.perf_counter() - start:.1f} s")
        local = timed_run(suite, root / "local", "local")
        ray_time = timed_run(suite, root / "ray", "ray")
        a, b = stored_values(root / "local"), stored_values(root / "ray")
        same = a == b
        differ = sum(1 for k in a if a[k] != b.get(k))
        for k in sorted(k for k in a if a[k] != b.get(k)):
            print(f"  differs: {k[1]} {k[2]} {k[3]}: local {a[k]!r} ray {b.get(k)!r}")
    init, first, per_task = task_overhead_ms(args.tasks)
    print(f"suite {args.suite}: {n_cells} cells")
    print(f"local runner:             {local:7.1f} s")
    print(f"ray runner:               {ray_time:7.1f} s (ray.init and worker start-up included)")
    print(f"ratio ray / local:        {ray_time / local:7.2f} (target <= 1.3 on 2 cores)")
    print(f"identical stored numbers: {same} ({len(a)} rows, {differ} differ)")
    print(f"ray.init (local cluster): {init:7.2f} s; first no-op task round trip {first:.0f} ms")
    print(f"per-task scheduling overhead: {per_task:.2f} ms "
          f"(median of 3 x {args.tasks} no-op tasks)")
    print(f"mean local cost per cell: {local / n_cells:.2f} s")


if __name__ == "__main__":
    main()
