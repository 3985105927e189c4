"""Compressed transfer: crafted examples reused per source vs re-crafted per (source, target).

Runs the same `transfer:compressed` cell twice in one process — `reuse: true` (craft once per
source, evaluate on every target) and `reuse: false` (craft again for every pair) — with the disk
cache off for both, and prints the wall times and their ratio. Target: speed-up >= 0.8 x number of
targets.

    .venv/bin/python benchmarks/transfer_reuse.py [--n 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from robustbench_vit import evaluate_cell, load_suite

SUITE = """
suite: bench_transfer_reuse
data: {{dataset: digits, split: test, image_size: 32, n_examples: {n}, batch_size: 100}}
models: [{{name: vit, source: "zoo:digits_vit"}}]
scenarios:
  - {{kind: transfer, name: compressed, attack: pgd, eps: 8/255, steps: 10, cache: false,
     targets: [int8, prune30, prune50, prune70], student: "zoo:digits_vit_student",
     sweep: {{reuse: [true, false]}}}}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="images in the slice")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "suite.yaml"
        path.write_text(SUITE.format(n=args.n))
        reuse, recraft = load_suite(path).cells("cpu")
    evaluate_cell(reuse)  # warm-up: trains/loads the zoo models
    times: dict[str, list[float]] = {"reuse": [], "recraft": []}
    for _ in range(args.repeats):
        for label, cell in (("reuse", reuse), ("recraft", recraft)):
            start = time.perf_counter()
            result = evaluate_cell(cell)
            times[label].append(time.perf_counter() - start)
            assert result.status == "ok", result.error
    targets = len(reuse.scenario_params["targets"]) + 1  # + the distilled student
    a, b = statistics.median(times["reuse"]), statistics.median(times["recraft"])
    print(f"images={args.n} targets={targets} (+ the original model as a source/target)")
    print(f"reuse (craft once per source):      {a:7.2f} s (median of {args.repeats})")
    print(f"re-craft for every (source,target): {b:7.2f} s")
    print(f"speed-up {b / a:.2f}x (target >= {0.8 * targets:.1f}x = 0.8 x targets)")


if __name__ == "__main__":
    main()
