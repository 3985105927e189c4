"""Cost of the uniform attention temperature (a torch function mode inside every attention module)
against the unpatched model, on the same images in one process.

Times forward passes (no gradient) of a timm ViT at 224 px and of a Swin-T-shaped model, each
unpatched, tempered with T = 1 (runs the original forward) and with T = 2 (the mode: SDPA kept
fused with a scaled logit and bias), alternating repetitions, medians; logs the ratios
tempered / unpatched (target for T = 2: at most 1.10 on the ViT).

    .venv/bin/python benchmarks/attention_temperature.py [--reps 5] [--batch 8]
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import time

import torch

TARGET_RATIO = 1.10
log = logging.getLogger("attention_temperature")


def seconds(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Wall time of one no-grad forward."""
    start = time.perf_counter()
    with torch.no_grad():
        model(x)
    return time.perf_counter() - start


def compare(arch: str, kwargs: dict, batch: int, reps: int) -> dict[str, float]:
    """{variant: median seconds} for the unpatched, T=1 and T=2 models of `arch`."""
    import timm

    from robustbench_vit.api import adapter_for, tempered

    torch.manual_seed(0)
    base = timm.create_model(arch, **kwargs).eval()
    variants = {"unpatched": base}
    for t in (1.0, 2.0):
        model = copy.deepcopy(base)
        adapter, net = adapter_for(model)
        for attn in adapter.attention_modules(net):
            tempered(attn, temperature=t)
        variants[f"T={t:g}"] = model
    x = torch.rand(batch, 3, 224, 224)
    for model in variants.values():
        seconds(model, x)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, model in variants.items():
            times[name].append(seconds(model, x))
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    """Time the variants and log the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for arch, kwargs in (("vit_small_patch16_224", {}), ("swin_tiny_patch4_window7_224", {})):
        med = compare(arch, kwargs, args.batch, args.reps)
        base = med["unpatched"]
        log.info("%s, batch %d: unpatched %.3fs, T=1 %.3fs (x%.3f), T=2 %.3fs (x%.3f)", arch,
                 args.batch, base, med["T=1"], med["T=1"] / base, med["T=2"], med["T=2"] / base)
        if arch.startswith("vit") and med["T=2"] / base > TARGET_RATIO:
            log.warning("T=2 costs more than %.2fx the unpatched forward", TARGET_RATIO)


if __name__ == "__main__":
    main()
