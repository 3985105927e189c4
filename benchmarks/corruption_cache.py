"""Corruption scenario: one shared corrupted-image cache vs regenerating the corruptions per model.

3 models x 19 corruptions x 5 severities on the digits test slice, in one process:

- shared: one fresh $RBV_CACHE for the whole run, so the first model generates and the others read;
- per model: a fresh $RBV_CACHE for each model, so every model regenerates its corrupted images.

Both use the same generator settings (`--workers`, 0 = auto); each fresh cache folder links the
real zoo folder, so no model is retrained. Target: ratio >= 2.5. Then the generator's throughput:
images/s of the parallel generator vs a single-process loop calling imagecorruptions directly.

    .venv/bin/python benchmarks/corruption_cache.py [--n 450] [--workers 0]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from robustbench_vit import evaluate_cell, load_suite
from robustbench_vit.core.cache import cache_dir
from robustbench_vit.core.cells import Cell
from robustbench_vit.data.corruption_cache import available_cpus, corrupt_images, to_uint8
from robustbench_vit.data.corruptions import ALL, image_seed, load_imagecorruptions
from robustbench_vit.data.datasets import Digits

SUITE = """
suite: bench_corruption_cache
device: cpu
data: {{dataset: digits, split: test, image_size: 32, n_examples: {n}, batch_size: 150}}
models:
  - {{name: vit, source: "zoo:digits_vit"}}
  - {{name: student, source: "zoo:digits_vit_student"}}
  - name: tiny
    source: timm:vit_tiny_patch16_224
    kwargs: {{img_size: 32, patch_size: 8, embed_dim: 48, depth: 2, num_heads: 2, num_classes: 10}}
scenarios:
  - {{kind: clean}}
  - {{kind: corruption, names: all, baseline: vit, workers: {workers},
     sweep: {{severity: [1, 2, 3, 4, 5]}}}}
"""


@contextmanager
def fresh_cache(root: Path, name: str, zoo: Path) -> Iterator[Path]:
    """$RBV_CACHE set to an empty folder (holding a link to the real zoo) for the block."""
    folder = root / name
    folder.mkdir()
    (folder / "zoo").symlink_to(zoo, target_is_directory=True)
    saved = os.environ.get("RBV_CACHE")
    os.environ["RBV_CACHE"] = str(folder)
    try:
        yield folder
    finally:
        if saved is None:
            os.environ.pop("RBV_CACHE", None)
        else:
            os.environ["RBV_CACHE"] = saved


def evaluate(cells: list[Cell]) -> float:
    """Seconds to evaluate `cells` in order (each must succeed)."""
    start = time.perf_counter()
    for cell in cells:
        result = evaluate_cell(cell)
        assert result.status == "ok", result.error
    return time.perf_counter() - start


def cache_ratio(cells: list[Cell], root: Path, zoo: Path) -> dict[str, tuple[float, float]]:
    """model -> (seconds with one shared cache, seconds with a fresh cache for this model)."""
    models = list(dict.fromkeys(c.model.name for c in cells))
    shared = {}
    with fresh_cache(root, "shared", zoo):
        for model in models:
            shared[model] = evaluate([c for c in cells if c.model.name == model])
    out = {}
    for model in models:
        with fresh_cache(root, f"only-{model}", zoo):
            out[model] = (shared[model], evaluate([c for c in cells if c.model.name == model]))
    return out


def throughput(images: np.ndarray, workers: int) -> tuple[float, float, float]:
    """Images/s at severity 3, all 19 corruptions: imagecorruptions loop, ours x1, ours xW."""
    load_imagecorruptions()  # imported with the compat patches (numpy 2, scikit-image >= 0.19)
    from imagecorruptions import corrupt

    total = len(images) * len(ALL)
    start = time.perf_counter()
    for name in ALL:
        for i, image in enumerate(images):
            np.random.seed(image_seed(0, i))  # as our generator seeds each image
            corrupt(image, corruption_name=name, severity=3)
    raw = total / (time.perf_counter() - start)
    rates = []
    for n in (1, workers):
        start = time.perf_counter()
        corrupt_images(images, ALL, 3, 0, workers=n)
        rates.append(total / (time.perf_counter() - start))
    return raw, rates[0], rates[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=450, help="images (the digits test split: 450)")
    parser.add_argument("--workers", type=int, default=0, help="generator processes (0 = auto)")
    args = parser.parse_args()
    workers = args.workers or available_cpus()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "suite.yaml"
        path.write_text(SUITE.format(n=args.n, workers=args.workers))
        everything = load_suite(path).cells("cpu")
        zoo = cache_dir("zoo")
        images = to_uint8(Digits(split="test").load().tensors[0][:args.n])
        for name in ALL:  # start the pool; each worker imports what every corruption needs
            corrupt_images(images[:4 * workers], [name], 1, 0, workers=workers)
        evaluate([c for c in everything if c.scenario_kind == "clean"])  # load (or train) models
        cells = [c for c in everything if c.scenario_kind == "corruption"]
        times = cache_ratio(cells, Path(tmp), zoo)
        raw, single, parallel = throughput(images, workers)
    shared, per_model = (sum(t[i] for t in times.values()) for i in (0, 1))
    print(f"{len(times)} models x {len(ALL)} corruptions x 5 severities, {len(images)} digits "
          f"images, generator workers={workers} ({available_cpus()} CPUs)")
    print(f"{'model':10} {'shared cache':>13} {'fresh cache':>12}")
    for model, (a, b) in times.items():
        print(f"{model:10} {a:11.1f} s {b:10.1f} s")
    print(f"{'total':10} {shared:11.1f} s {per_model:10.1f} s")
    print(f"ratio {per_model / shared:.2f}x (target >= 2.5x; at most {len(times)}x)")
    print(f"generator, severity 3, all corruptions ({len(images) * len(ALL)} images):")
    print(f"  imagecorruptions.corrupt loop, 1 process: {raw:7.0f} images/s")
    print(f"  corrupt_images, workers=1:                {single:7.0f} images/s")
    print(f"  corrupt_images, workers={workers}:                {parallel:7.0f} images/s "
          f"({parallel / raw:.2f}x the loop)")


if __name__ == "__main__":
    main()
