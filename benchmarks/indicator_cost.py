"""Cost of the attack-failure indicators as a fraction of the attack's own time.

In one process, for every attack cell of the quickstart (its data, its settings) on the chosen
defenses, this times `evaluate_cell` with the indicators at their default settings and the same
cell with `indicators: false`, alternating repetitions, and reports per cell and in total the
median extra time over the attack's own time (target <= 25 %).

    .venv/bin/python benchmarks/indicator_cost.py [--reps 3] [--defenses none,smoothing]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "suites" / "quickstart.yaml"
TARGET = 0.25


def attack_cells(defenses: list[str]) -> list[object]:
    """The quickstart's attack cells of digits_vit with one of `defenses`."""
    from robustbench_vit.config.load import load_suite

    return [cell for cell in load_suite(QUICKSTART).cells(device="cpu")
            if cell.scenario_kind == "attack" and cell.defense in defenses
            and cell.model.source == "zoo:digits_vit"]


def seconds(cell: object) -> float:
    from robustbench_vit.execution.evaluate import evaluate_cell

    start = time.perf_counter()
    result = evaluate_cell(cell)
    if result.status != "ok":
        raise SystemExit(f"{cell.scenario_label}: {result.status} {result.error}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--defenses", default="none,smoothing")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    cells = attack_cells(args.defenses.split(","))
    total_on = total_off = 0.0
    print(f"{'cell':58} {'attack s':>9} {'+indicators s':>14} {'extra':>7}")
    for cell in cells:
        off = dataclasses.replace(cell, scenario_params={**cell.scenario_params,
                                                         "indicators": False})
        seconds(cell), seconds(off)  # warm: models, data, compiled kernels
        on_times, off_times = [], []
        for _ in range(args.reps):
            on_times.append(seconds(cell))
            off_times.append(seconds(off))
        t_on, t_off = statistics.median(on_times), statistics.median(off_times)
        total_on, total_off = total_on + t_on, total_off + t_off
        params = {k: v for k, v in cell.scenario_params.items() if k in ("eps", "norm", "steps",
                                                                         "n_queries", "content")}
        label = f"{cell.defense} {cell.scenario_label} {params}"[:58]
        print(f"{label:58} {t_off:9.2f} {t_on - t_off:14.2f} {(t_on - t_off) / t_off:7.1%}",
              flush=True)
    extra = (total_on - total_off) / total_off
    print(f"\ntotal over {len(cells)} cells: attacks {total_off:.1f} s, indicators "
          f"{total_on - total_off:.1f} s = {extra:.1%} of the attacks' time "
          f"(target <= {TARGET:.0%}: {'met' if extra <= TARGET else 'NOT met'})")


if __name__ == "__main__":
    main()
