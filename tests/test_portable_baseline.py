"""Baselines know which weights they describe: a weights fingerprint on every row, a gate that says
"different weights" instead of reporting a regression, and the regression suite holding where the
float reduction order differs (one thread instead of two).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import timm
import torch
from test_gates import GATE, baseline_of, row, suite_with, table

from robustbench_vit.models.digest import weights_digest
from robustbench_vit.results.gates import check_gates

REPO = Path(__file__).resolve().parents[1]


# --- the fingerprint ------------------------------------------------------------------------------

def tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32,
                             depth=2, num_heads=2, num_classes=10)


def test_the_fingerprint_follows_the_weights_not_the_object() -> None:
    a, b = tiny(0), tiny(0)
    assert weights_digest(a) == weights_digest(b)  # same bytes, two objects
    assert weights_digest(tiny(1)) != weights_digest(a)
    c = copy.deepcopy(a)
    with torch.no_grad():  # one ulp of one weight: what another CPU's training changes
        w = c.head.weight
        w[0, 0] = torch.nextafter(w[0, 0], torch.tensor(float("inf")))
    assert weights_digest(c) != weights_digest(a)
    half = copy.deepcopy(a).to(torch.bfloat16)  # dtypes numpy cannot hold are hashed too
    assert len(weights_digest(half)) == 16 and weights_digest(half) != weights_digest(a)


def weighted(record: dict[str, object], weights: str | None) -> dict[str, object]:
    return {**record, "weights": weights}


def test_a_baseline_made_with_other_weights_is_not_a_regression() -> None:
    gate = {**GATE, "baseline": True}
    base = baseline_of(weighted(row(0.90, n=200), "aaaa"))
    [other] = check_gates(suite_with(gate), table(weighted(row(0.50, n=200), "bbbb")), base)
    assert not other.passed
    assert "baseline made with different weights (baseline aaaa, now bbbb)" in other.message
    assert "vs baseline" not in other.message  # no value comparison, so no regression claimed
    [same] = check_gates(suite_with(gate), table(weighted(row(0.50, n=200), "aaaa")), base)
    assert not same.passed and "0.5000 vs baseline 0.9000" in same.message  # a real regression
    [fine] = check_gates(suite_with(gate), table(weighted(row(0.89, n=200), "aaaa")), base)
    assert fine.passed


def test_a_baseline_without_fingerprints_compares_values_as_before() -> None:
    base = baseline_of(row(0.90, n=200))  # a CSV written before the column existed
    [outcome] = check_gates(suite_with({**GATE, "baseline": True}),
                            table(weighted(row(0.89, n=200), "bbbb")), base)
    assert outcome.passed


def test_the_committed_regression_baseline_records_its_weights() -> None:
    frame = pd.read_csv(REPO / "results" / "baselines" / "regression.csv", dtype=str)
    assert "weights" in frame.columns and frame["weights"].notna().all()
    by_defense = frame.groupby("defense")["weights"].nunique()
    assert (by_defense == 1).all()  # one model per defense, one fingerprint each


# --- the regression suite elsewhere --------------------------------------------------------------

def run_gates(tmp_path: Path, cache: Path,
              capability: str | None) -> subprocess.CompletedProcess[str]:
    """`pytest suites/regression.yaml` from a copy of the repository's suite and baseline, with a
    cache of its own; `capability` (ATEN_CPU_CAPABILITY: "default" = no AVX2/AVX512 kernels) makes
    torch compute as a CPU without those vector units would, in another float reduction order."""
    work = tmp_path / f"work-{capability}-{cache.name}"
    (work / "suites").mkdir(parents=True, exist_ok=True)
    (work / "results" / "baselines").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "suites" / "regression.yaml", work / "suites")
    shutil.copy(REPO / "results" / "baselines" / "regression.csv",
                work / "results" / "baselines")
    env = {**os.environ, "RBV_CACHE": str(cache)}
    if capability:
        env["ATEN_CPU_CAPABILITY"] = capability
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "suites/regression.yaml"], cwd=work, env=env, capture_output=True,
                          text=True, timeout=1200)


TRAIN_WITHOUT_REFERENCE = """
import robustbench_vit.models.zoo as zoo
from robustbench_vit.core.plugins import load_plugins
load_plugins()
zoo.reference_checkpoint = lambda name, recipe: None  # as if no checkpoint were shipped
print(zoo.ensure_trained("digits_vit", "cpu"))
"""


@pytest.mark.slow  # evaluates the regression suite twice and trains digits_vit (~5 min, 2 cores)
def test_the_regression_gates_hold_on_another_cpu_and_name_other_weights(tmp_path: Path) -> None:
    # another CPU's kernels, the shipped reference weights: the committed baseline holds
    elsewhere = run_gates(tmp_path, tmp_path / "cache", capability="default")
    assert elsewhere.returncode == 0, elsewhere.stdout[-3000:]

    # digits_vit trained on "another CPU" (no shipped checkpoint): other weights, said plainly
    cache = tmp_path / "retrained"
    env = {**os.environ, "RBV_CACHE": str(cache), "ATEN_CPU_CAPABILITY": "default"}
    trained = subprocess.run([sys.executable, "-c", TRAIN_WITHOUT_REFERENCE], env=env,
                             capture_output=True, text=True, timeout=1200)
    assert trained.returncode == 0, trained.stderr[-3000:]
    [checkpoint] = (cache / "zoo").glob("digits_vit-*.safetensors")
    assert json.loads(checkpoint.with_suffix(".json").read_text()).get("reference") is not True
    other = run_gates(tmp_path, cache, capability="default")
    assert other.returncode == 1, other.stdout[-3000:]
    assert "baseline made with different weights" in other.stdout
    assert " vs baseline " not in other.stdout  # no value was reported as a regression
