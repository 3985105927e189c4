"""`occlusion` and `fourier` through a suite: a ViT and a CNN, stored rows, the headline pivot,
the plan, the plots and the HTML page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robustbench_vit import load_suite
from robustbench_vit.execution.plan import plan_skips
from robustbench_vit.execution.run import run_suite
from robustbench_vit.report.html import export_html
from robustbench_vit.report.plots import build_plots
from robustbench_vit.results import table as lb
from robustbench_vit.results.store import ResultStore

SUITE = """
suite: probes
seed: 0
data: {dataset: digits, split: test, image_size: 32, n_examples: 32, batch_size: 16}
models:
  - {name: vit, source: "zoo:digits_vit"}
  - {name: cnn, source: "timm:test_resnet", kwargs: {num_classes: 10}}
scenarios:
  - {kind: occlusion, ratios: [0, 0.5, 0.9]}
  - {kind: occlusion, grid: token, ratios: [0.5]}
  - {kind: fourier, stride: 8}
"""


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory, digits_model: object) -> Path:
    folder = tmp_path_factory.mktemp("probes")
    (folder / "suite.yaml").write_text(SUITE)
    summary = run_suite(load_suite(folder / "suite.yaml"), folder / "results", device="cpu")
    assert summary is not None
    return folder


def frame(stored: Path) -> object:
    with ResultStore(stored / "results") as store:
        return store.frame("probes")


def test_rows_skips_and_headline_pivot(stored: Path) -> None:
    rows = frame(stored)
    status = {(r.model, json.loads(r.params).get("grid")): r.status
              for r in rows.itertuples() if r.scenario == "occlusion"}
    assert status[("cnn", "token")] == "skipped" and status[("vit", "token")] == "ok"
    table = lb.long_table(rows)
    occ = table[(table["metric"] == "occlusion_accuracy")
                & table["params"].str.contains('"ratio":')]
    grids = {(m, json.loads(p)["mask_grid"]) for m, p in zip(occ["model"], occ["params"],
                                                              strict=True)}
    assert grids == {("vit", "token"), ("cnn", "pixel")}
    assert occ["examples"].map(lambda e: isinstance(e, str)).all()
    wide = lb.pivot(table)
    assert sorted(wide.columns) == [  # the ratio and frequency rows stay out of the pivot
        "fourier fourier_error_high", "fourier fourier_error_low",
        "occlusion grid=auto ratios=[0.0,0.5,0.9] occlusion_accuracy",
        "occlusion grid=token ratios=[0.5] occlusion_accuracy"]
    assert wide.notna().sum().to_dict()["occlusion grid=auto ratios=[0.0,0.5,0.9] "
                                        "occlusion_accuracy"] == 2  # one column: ViT and CNN
    mean = table[table["params"].str.contains('"aggregate"')
                 & (table["model"] == "vit") & table["params"].str.contains("0.9")]
    vit = occ[(occ["model"] == "vit") & occ["params"].str.contains("0.9")]
    assert mean["value"].iloc[0] == pytest.approx(vit["value"].mean())
    freq = table[table["metric"] == "fourier_error"]
    assert len(freq) == 2 * 16


def test_plan_lists_the_token_grid_on_a_cnn(stored: Path) -> None:
    lines = [s.line() for s in plan_skips(load_suite(stored / "suite.yaml"))]
    assert lines == ["cnn / none / occlusion: resnet: ResNet has no patch tokens"]


def test_plots_and_html(stored: Path) -> None:
    plots = build_plots(lb.long_table(frame(stored)))
    curves = [p for p in plots if p["section"] == "Occlusion"]
    assert len(curves) == 2  # ratios [0, 0.5, 0.9] and the token-grid cell
    names = {s["name"] for s in curves[0]["series"]}
    assert names == {"vit / none [token 8x8]", "cnn / none [pixel 8x8]"}
    heat = [p for p in plots if p["section"] == "Fourier heat map"]
    assert [p["kind"] for p in heat] == ["grid", "grid"]
    assert heat[0]["x"] == ["-16", "-8", "0", "8"] and heat[0]["y"] == heat[0]["x"]
    html = export_html(stored / "results", "probes", stored / "board.html").read_text()
    assert "accuracy vs drop ratio" in html and "Fourier heat map" in html
    assert html.count('class="grid-cell"') == 2 * 16
