"""Certification time with token dropping against the full masked forward, on the same images.

In one process, on the trained digits_vit with column smoothing (b=4, stride 1) and 200 test images,
this times the vote counting both ways (alternating repetitions, medians), checks that the votes
are identical, and logs the ratio full / dropped (target >= 3).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/certify_speed.py [--reps 3] [--n 200]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import torch

TARGET_RATIO = 3.0
log = logging.getLogger("certify_speed")


def timed(fn: object, *args: object, **kwargs: object) -> tuple[float, torch.Tensor]:
    """(seconds, result) of one call."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)  # type: ignore[operator]
    return time.perf_counter() - start, out


def main() -> None:
    """Time both paths and log the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from robustbench_vit.api import DEFENSES
    from robustbench_vit.core.cells import ModelConfig
    from robustbench_vit.core.plugins import load_plugins
    from robustbench_vit.data.datasets import Digits
    from robustbench_vit.models.sources import build_model

    load_plugins()
    torch.set_grad_enabled(False)
    base = build_model(ModelConfig(name="vit", source="zoo:digits_vit"), "cpu")
    smoothed = DEFENSES.get("smoothing")(ablation="column", size=4).apply(base).eval()
    x, _ = Digits(split="test").load().tensors
    x = x[: args.n]
    smoothed.votes(x[:8], token_dropping=True), smoothed.votes(x[:8], token_dropping=False)
    dropped, full = [], []
    for _ in range(args.reps):
        t_drop, v_drop = timed(smoothed.votes, x, token_dropping=True)
        t_full, v_full = timed(smoothed.votes, x, token_dropping=False)
        if not torch.equal(v_drop, v_full):
            raise SystemExit("token dropping changed the votes")
        dropped.append(t_drop)
        full.append(t_full)
    ratio = statistics.median(full) / statistics.median(dropped)
    log.info(
        "%d images x %d ablations: token dropping %.3fs, full masked forward %.3fs (medians of "
        "%d); votes identical; speed-up %.2fx (target >= %.1fx)",
        len(x),
        len(smoothed.positions(*x.shape[-2:])),
        statistics.median(dropped),
        statistics.median(full),
        args.reps,
        ratio,
        TARGET_RATIO,
    )


if __name__ == "__main__":
    main()
