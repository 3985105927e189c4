"""Framework overhead of one PGD cell against a hand-written PGD loop, and quickstart wall times.

In one process, on the trained digits_vit and the quickstart's 300 test images, this times
(a) a minimal hand-written PGD-10 L∞ loop at eps 8/255 and (b) the same evaluation as one rbv cell
(`evaluate_cell`, data loader and cached model included), alternating repetitions and reporting
medians and the ratio rbv / hand-written (target <= 1.10). Then it times `rbv evaluate
suites/quickstart.yaml` cold (fresh empty cache and results: includes zoo training) and warm.

    .venv/bin/python benchmarks/attack_overhead.py [--reps 5] [--skip-cold]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "suites" / "quickstart.yaml"
TARGET_RATIO = 1.10
EPS, STEPS = 8 / 255, 10
MODEL = "zoo:digits_vit"


def pgd_cell() -> object:
    """The quickstart's digits_vit cell PGD-10 L∞ at eps 8/255 (its data settings and seed)."""
    from robustbench_vit.config.load import load_suite

    for cell in load_suite(QUICKSTART).cells(device="cpu"):
        params = cell.scenario_params
        kind = (cell.model.source, cell.scenario_kind, params.get("name"), params.get("norm"))
        if kind == (MODEL, "attack", "pgd", "Linf") and abs(params["eps"] - EPS) < 1e-12 \
                and params["steps"] == STEPS:
            return cell
    raise SystemExit(f"{QUICKSTART} has no {MODEL} pgd Linf eps 8/255 steps {STEPS} cell")


def cell_images(cell: object, model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """The cell's images and labels as two tensors (the same slice evaluate_cell evaluates)."""
    from robustbench_vit.core.params import validate_params
    from robustbench_vit.core.registry import DATASETS
    from robustbench_vit.data.datasets import subset

    source = validate_params(DATASETS.get(cell.data.dataset), cell.data.params)
    dataset = subset(source.load(getattr(model, "data_config", None)), cell.data.n_examples,
                     cell.seed)
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(xs), torch.tensor([int(label) for label in ys])


def hand_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float = EPS,
             steps: int = STEPS) -> torch.Tensor:
    """Minimal PGD L∞: random start, alpha 2.5·eps/steps, sign steps, projection, clamp."""
    alpha = 2.5 * eps / steps
    x_adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x_adv), y)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = (x + (x_adv - x).clamp(-eps, eps)).clamp(0, 1)
    return x_adv.detach()


def hand_evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Robust accuracy of the hand-written loop, batch by batch (clean-correct and adv-correct)."""
    torch.manual_seed(0)
    robust = 0
    for xb, yb in zip(x.split(batch_size), y.split(batch_size), strict=True):
        with torch.no_grad():
            clean = model(xb).argmax(1) == yb
        x_adv = hand_pgd(model, xb, yb)
        with torch.no_grad():
            robust += int((clean & (model(x_adv).argmax(1) == yb)).sum())
    return robust / len(y)


def rbv_evaluate(cell: object) -> float:
    """Robust accuracy of the cell through rbv's one evaluation path."""
    from robustbench_vit.execution.evaluate import evaluate_cell

    result = evaluate_cell(cell)
    if result.status != "ok":
        raise SystemExit(f"cell failed: {result.error}")
    return next(m.value for m in result.measurements if m.metric == "robust_accuracy")


def timed(fn: Callable[[], float]) -> tuple[float, float]:
    """(seconds, return value) of one call."""
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def compare(reps: int) -> None:
    """Alternate hand-written and rbv runs `reps` times; print medians and the ratio."""
    from robustbench_vit.core.plugins import load_plugins
    from robustbench_vit.execution.evaluate import load_model, resolve_device

    load_plugins()
    cell = pgd_cell()
    model = load_model(cell.model, resolve_device(cell.device))  # also trains on first use
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = cell_images(cell, model)
    hand, rbv = [], []
    for _ in range(reps + 1):  # the first round warms up caches and is dropped
        hand.append(timed(lambda: hand_evaluate(model, x, y, cell.data.batch_size)))
        rbv.append(timed(lambda: rbv_evaluate(cell)))
    hand_s = statistics.median(t for t, _ in hand[1:])
    rbv_s = statistics.median(t for t, _ in rbv[1:])
    print(f"images: {len(y)}  PGD-{STEPS} Linf eps 8/255  torch threads: {torch.get_num_threads()}")
    print(f"hand-written  median {hand_s:7.3f} s  robust accuracy {hand[-1][1]:.3f}  "
          f"runs {[round(t, 3) for t, _ in hand[1:]]}")
    print(f"rbv cell      median {rbv_s:7.3f} s  robust accuracy {rbv[-1][1]:.3f}  "
          f"runs {[round(t, 3) for t, _ in rbv[1:]]}")
    verdict = "ok" if rbv_s / hand_s <= TARGET_RATIO else "ABOVE TARGET"
    print(f"ratio rbv / hand-written: {rbv_s / hand_s:.3f}  (target <= {TARGET_RATIO}: {verdict})")


def rbv_command() -> str:
    """The rbv console script of this interpreter's environment."""
    local = Path(sys.executable).parent / "rbv"
    found = str(local) if local.exists() else shutil.which("rbv")
    if not found:
        raise SystemExit("the rbv console script is not installed (pip install -e .)")
    return found


def quickstart_seconds(results: Path, cache: Path | None) -> str:
    """Wall time of `rbv evaluate suites/quickstart.yaml --results RESULTS -q`, as text.

    Exit code 1 (some cells ended in error, the rest stored) is reported, not fatal.
    """
    env = dict(os.environ)
    if cache is not None:
        env["RBV_CACHE"] = str(cache)
    start = time.perf_counter()
    proc = subprocess.run([rbv_command(), "evaluate", str(QUICKSTART), "--results", str(results),
                           "-q"], env=env, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise SystemExit(f"rbv evaluate failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    summary = [line for line in proc.stderr.splitlines() if " ok, " in line]
    note = f"  (exit {proc.returncode}: {summary[-1] if summary else 'see rbv output'})" \
        if proc.returncode else ""
    return f"{seconds:7.1f} s{note}"


def quickstart_times(skip_cold: bool) -> None:
    """Print quickstart wall times: cold (fresh cache), warm with fresh results, warm resume."""
    with tempfile.TemporaryDirectory(prefix="rbv-bench-") as tmp:
        cache = None if skip_cold else Path(tmp) / "cache"
        if not skip_cold:
            took = quickstart_seconds(Path(tmp) / "cold", cache)
            print(f"quickstart cold (empty RBV_CACHE and results, zoo training): {took}")
        took = quickstart_seconds(Path(tmp) / "warm", cache)
        print(f"quickstart warm (cached models, empty results):              {took}")
        took = quickstart_seconds(Path(tmp) / "warm", cache)
        print(f"quickstart warm (same command again, finished cells stored): {took}")


def main(argv: list[str] | None = None) -> None:
    """Parse options, run the in-process comparison, then the quickstart timings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions of each (median)")
    parser.add_argument("--skip-cold", action="store_true",
                        help="skip the cold quickstart run (zoo training in a fresh cache)")
    parser.add_argument("--skip-quickstart", action="store_true", help="only the in-process part")
    args = parser.parse_args(argv)
    compare(args.reps)
    if not args.skip_quickstart:
        quickstart_times(args.skip_cold)


if __name__ == "__main__":
    main()
