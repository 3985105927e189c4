"""A third-party scenario plugin: its own metric, aggregate and plot, no edit to the package.

The plugin is a module plus an installed distribution's entry point (a dist-info folder on
PYTHONPATH), exactly as `pip install` of a real plugin would leave it; everything goes through the
real `rbv` console script.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

PLUGIN = '''
"""toy_rbv_scenario: a third-party scenario measuring accuracy on brightened images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pandas as pd
import torch

from robustbench_vit.api import (
    LONG_COLUMNS, CellContext, Measurement, Scenario, canonical_json, proportion,
    register_aggregate, register_metric, register_plot, register_scenario,
)
from robustbench_vit.report import plots

register_metric("brightness_accuracy", higher_is_better=True, headline=True,
                description="Top-1 accuracy on brightened images")
register_metric("brightness_mean", higher_is_better=True, headline=True,
                description="Mean brightness accuracy over the swept deltas")


@register_scenario("toy_brightness")
@dataclass(frozen=True, kw_only=True)
class ToyBrightness(Scenario):
    """Accuracy on images brightened by `delta` (a third-party toy scenario)."""

    kind: ClassVar[str] = "toy_brightness"
    delta: float = 0.1

    @torch.no_grad()
    def run(self, ctx: CellContext) -> list[Measurement]:
        right = n = 0
        for x, y in ctx.batches():
            right += int((ctx.model((x + self.delta).clamp(0, 1)).argmax(1) == y).sum())
            n += len(y)
        return [proportion("brightness_accuracy", right, n)]


@register_scenario("toy_mystery")
@dataclass(frozen=True, kw_only=True)
class ToyMystery(Scenario):
    """Reports a metric nobody registered (must fail the cell)."""

    kind: ClassVar[str] = "toy_mystery"

    def run(self, ctx: CellContext) -> list[Measurement]:
        return [Measurement(metric="mystery_metric", value=0.5, n=1)]


@register_aggregate("toy_brightness_mean")
def brightness_mean(table: pd.DataFrame) -> pd.DataFrame:
    """Mean brightness accuracy per model/defense over the swept deltas."""
    rows = table[table["metric"] == "brightness_accuracy"]
    out = [{"suite": s, "model": m, "defense": d, "scenario": "toy_brightness",
            "params": canonical_json({"aggregate": "mean"}), "metric": "brightness_mean",
            "value": float(g["value"].mean()), "n": len(g), "ci_low": None, "ci_high": None}
           for (s, m, d), g in rows.groupby(["suite", "model", "defense"], sort=False)]
    return pd.DataFrame(out, columns=LONG_COLUMNS)


@register_plot("toy_brightness_curve", order=60)
def brightness_curve(table: pd.DataFrame) -> list[dict]:
    """Brightness accuracy vs delta."""
    rows = table[(table["metric"] == "brightness_accuracy")
                 & plots.has(table, lambda p: "delta" in p)]
    if rows["p"].map(lambda p: p["delta"]).nunique() < 2:
        return []
    return [{"kind": "line", "section": "Toy brightness", "title": "toy accuracy vs brightness",
             "subtitle": plots.CI_NOTE, "x_label": "delta", "y_label": "accuracy (%)",
             "percent": True,
             "series": plots.series_by_subject(rows, lambda r: plots.point(r, r["p"]["delta"]))}]
'''

SUITE = """\
suite: toy
device: cpu
data: {dataset: synthetic, size: 16, image_size: 32, batch_size: 8}
models:
  - name: vit
    source: timm:vit_tiny_patch16_224
    kwargs: {img_size: 32, patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2, num_classes: 10}
scenarios:
  - {kind: clean}
  - {kind: toy_brightness, sweep: {delta: [0.0, 0.25]}}
"""


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """PYTHONPATH with the plugin module and its distribution's entry point."""
    site = tmp_path_factory.mktemp("site")
    (site / "toy_rbv_scenario.py").write_text(PLUGIN, encoding="utf-8")
    info = site / "toy_rbv_scenario-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-rbv-scenario\n"
                                   "Version: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("[robustbench_vit.plugins]\ntoy = toy_rbv_scenario\n",
                                           encoding="utf-8")
    env = dict(os.environ, RBV_CACHE=str(tmp_path_factory.mktemp("cache")))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p)
    return env


def rbv(rbv_bin: str, *args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([rbv_bin, *args], capture_output=True, text=True, timeout=600,
                          env=env, cwd=cwd)


def test_plugin_components_are_listed(rbv_bin: str, plugin_env: dict[str, str],
                                      tmp_path: Path) -> None:
    for kind, name in [("scenarios", "toy_brightness"), ("metrics", "brightness_accuracy"),
                       ("aggregates", "toy_brightness_mean"), ("plots", "toy_brightness_curve")]:
        proc = rbv(rbv_bin, "ls", kind, env=plugin_env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        assert name in proc.stdout, (kind, proc.stdout)


def test_plugin_scenario_reaches_leaderboard_and_html(rbv_bin: str, plugin_env: dict[str, str],
                                                      tmp_path: Path) -> None:
    (tmp_path / "toy.yaml").write_text(SUITE, encoding="utf-8")
    proc = rbv(rbv_bin, "evaluate", "toy.yaml", "-q", env=plugin_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "toy_brightness delta=0.25 brightness_accuracy" in proc.stdout

    proc = rbv(rbv_bin, "leaderboard", "-f", "json", env=plugin_env, cwd=tmp_path)
    rows = json.loads(proc.stdout)
    stored = [r for r in rows if r["metric"] == "brightness_accuracy"]
    assert sorted(r["params"]["delta"] for r in stored) == [0.0, 0.25]
    [mean] = [r for r in rows if r["metric"] == "brightness_mean"]
    assert mean["value"] == pytest.approx(sum(r["value"] for r in stored) / 2)

    proc = rbv(rbv_bin, "export-html", "toy", "-o", "page.html", env=plugin_env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "page.html").read_text(encoding="utf-8")
    assert "toy accuracy vs brightness" in page and "Toy brightness" in page
    assert "brightness_mean" in page

    # without the plugin its stored metric is unknown: an error naming it, not a dropped column
    bare = dict(plugin_env, PYTHONPATH="")
    proc = rbv(rbv_bin, "leaderboard", env=bare, cwd=tmp_path)
    assert proc.returncode == 2
    assert "brightness_accuracy" in proc.stderr and "Traceback" not in proc.stderr


def test_an_unregistered_metric_fails_the_cell(rbv_bin: str, plugin_env: dict[str, str],
                                               tmp_path: Path) -> None:
    (tmp_path / "mystery.yaml").write_text(
        SUITE.replace("suite: toy", "suite: mystery").replace(
            "{kind: toy_brightness, sweep: {delta: [0.0, 0.25]}}", "{kind: toy_mystery}"),
        encoding="utf-8")
    proc = rbv(rbv_bin, "evaluate", "mystery.yaml", "-q", env=plugin_env, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    proc = rbv(rbv_bin, "leaderboard", "--suite", "mystery", "-f", "json", env=plugin_env,
               cwd=tmp_path)
    assert "mystery_metric" not in proc.stdout  # never stored as a number
    from robustbench_vit.results.store import ResultStore

    with ResultStore(tmp_path / "results") as store:
        frame = store.frame("mystery")
    errors = frame[frame["status"] == "error"]["error"].tolist()
    assert len(errors) == 1 and "mystery_metric" in errors[0] and "register_metric" in errors[0]
