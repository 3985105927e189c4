"""Leaderboard: Wilson intervals, calibration error, the long table, its pivot and text formats."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch

from robustbench_vit.core.cells import Cell, DataConfig, ModelConfig, canonical_json
from robustbench_vit.core.metrics import (
    Measurement,
    expected_calibration_error,
    proportion,
    wilson_interval,
)
from robustbench_vit.execution.evaluate import CellResult
from robustbench_vit.results import table as lb
from robustbench_vit.results.store import ResultStore

# --- metrics -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("successes", "n", "low", "high"), [
    (0, 10, 0.0, 0.27753),
    (5, 10, 0.23659, 0.76341),
    (10, 10, 0.72247, 1.0),
    (1, 1, 0.20655, 1.0),
    (81, 263, 0.25529, 0.36621),
    (0, 0, 0.0, 1.0),
])
def test_wilson_interval_known_values(successes: int, n: int, low: float, high: float) -> None:
    assert wilson_interval(successes, n) == pytest.approx((low, high), abs=1e-5)


def test_wilson_interval_is_symmetric_and_contains_p() -> None:
    for k in range(0, 21):
        lo, hi = wilson_interval(k, 20)
        assert 0 <= lo <= k / 20 <= hi <= 1
        mirror = wilson_interval(20 - k, 20)
        assert (lo, hi) == pytest.approx((1 - mirror[1], 1 - mirror[0]), abs=1e-12)
    narrow, wide = wilson_interval(5, 10, z=1.0), wilson_interval(5, 10)
    assert wide[0] < narrow[0] < 0.5 < narrow[1] < wide[1]


def test_proportion_measurement() -> None:
    m = proportion("accuracy", 5, 10, target="int8")
    assert (m.metric, m.value, m.n, m.extra) == ("accuracy", 0.5, 10, {"target": "int8"})
    assert (m.ci_low, m.ci_high) == pytest.approx(wilson_interval(5, 10))


def test_ece_on_hand_made_probabilities() -> None:
    probs = torch.tensor([[0.95, 0.05], [0.85, 0.15], [0.35, 0.65], [0.45, 0.55]])
    labels = torch.tensor([0, 1, 1, 1])
    # bins of width 0.2: (0.8, 1] holds 0.95 (right) and 0.85 (wrong): |0.5 - 0.9| * 2/4 = 0.2
    # (0.6, 0.8] holds 0.65 (right): 0.35 / 4; (0.4, 0.6] holds 0.55 (right): 0.45 / 4
    assert expected_calibration_error(probs, labels, bins=5) == pytest.approx(0.4)


def test_ece_extremes() -> None:
    sure = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(sure, torch.tensor([0, 1])) == pytest.approx(0.0)
    assert expected_calibration_error(sure, torch.tensor([1, 0])) == pytest.approx(1.0)
    half = torch.tensor([[0.9, 0.1]] * 4)
    assert expected_calibration_error(half, torch.tensor([0, 0, 1, 1])) == pytest.approx(0.4)


# --- stored rows ---------------------------------------------------------------------------------

def cell(model: str, scenario: str, params: dict[str, object], defense: str = "none",
         defense_params: dict[str, object] | None = None) -> Cell:
    return Cell(suite="lb", suite_version=1,
                model=ModelConfig(name=model, source=f"timm:{model}", fingerprint=model),
                defense=defense, defense_params=defense_params or {},
                scenario_kind=scenario.split(":")[0],
                scenario_params={**params, **({"name": scenario.split(":")[1]}
                                              if ":" in scenario else {})},
                data=DataConfig(dataset="digits"), seed=0)


def ok(c: Cell, *measurements: Measurement) -> CellResult:
    return CellResult(cell_key=c.key, status="ok", measurements=list(measurements))


def clean(c: Cell, correct: int) -> CellResult:
    return ok(c, proportion("accuracy", correct, 100),
              Measurement(metric="ece", value=0.05, n=100))


def pgd(c: Cell, robust: int) -> CellResult:
    return ok(c, proportion("robust_accuracy", robust, 100),
              proportion("attack_success_rate", 90 - robust, 90))


PGD_EPS = [3 / 255, 8 / 255]


@pytest.fixture()
def rows(tmp_path: Path) -> Iterator[pd.DataFrame]:
    """Two models (one also defended), clean and a pgd eps sweep, plus an error and a skip."""
    with ResultStore(tmp_path / "results") as store:
        for model, defense, dparams, base in [
            ("vit", "none", None, 90),
            ("vit", "temperature_scaling", {"temperature": 2.0}, 88),
            ("deit", "none", None, 80),
        ]:
            c = cell(model, "clean", {"ece_bins": 15}, defense, dparams)
            store.commit(c, clean(c, base))
            for i, eps in enumerate(PGD_EPS):
                c = cell(model, "attack:pgd", {"eps": eps, "steps": 10}, defense, dparams)
                store.commit(c, pgd(c, base // (2 + i)))
        broken = cell("deit", "attack:square", {"eps": 8 / 255})
        store.commit(broken, CellResult(cell_key=broken.key, status="error", error="boom"))
        skipped = cell("deit", "certify", {"patch_size": 5})
        store.commit(skipped, CellResult(cell_key=skipped.key, status="skipped", error="n/a"))
        yield store.frame()


def test_long_table_keeps_only_ok_measurements(rows: pd.DataFrame) -> None:
    assert set(rows["status"]) == {"ok", "error", "skipped"}
    table = lb.long_table(rows)
    assert list(table.columns) == lb.LONG_COLUMNS
    assert len(table) == 3 * (2 + 2 * 2)
    assert set(table["scenario"]) == {"clean", "attack:pgd"}
    assert table["value"].notna().all() and table["metric"].notna().all()


def test_pivot_rows_and_varying_param_columns(rows: pd.DataFrame) -> None:
    wide = lb.pivot(lb.long_table(rows))
    assert list(wide.index.names) == ["model", "defense"]
    assert list(wide.index) == [("vit", "none"), ("vit", "temperature_scaling(temperature=2)"),
                                ("deit", "none")]
    assert list(wide.columns) == ["clean accuracy", "attack:pgd eps=3/255 robust_accuracy",
                                  "attack:pgd eps=8/255 robust_accuracy"]
    assert wide.loc[("vit", "none"), "clean accuracy"] == pytest.approx(0.9)
    assert wide.loc[("deit", "none"), "attack:pgd eps=8/255 robust_accuracy"] == pytest.approx(
        0.26)
    assert wide.loc[("vit", "temperature_scaling(temperature=2)"),
                    "attack:pgd eps=3/255 robust_accuracy"] == pytest.approx(0.44)


def test_sweep_columns_are_in_increasing_order_whatever_the_commit_order(tmp_path: Path) -> None:
    with ResultStore(tmp_path / "r") as store:  # as a parallel runner may commit them
        for eps in (8 / 255, 1 / 255, 4 / 255):
            c = cell("vit", "attack:pgd", {"eps": eps, "steps": 10})
            store.commit(c, pgd(c, 50))
        c = cell("vit", "clean", {"ece_bins": 15})
        store.commit(c, clean(c, 90))
        frame = store.frame()
    assert list(lb.pivot(lb.long_table(frame)).columns) == [
        "attack:pgd eps=1/255 robust_accuracy", "attack:pgd eps=4/255 robust_accuracy",
        "attack:pgd eps=8/255 robust_accuracy", "clean accuracy"]


def test_pivot_with_all_metrics(rows: pd.DataFrame) -> None:
    wide = lb.pivot(lb.long_table(rows), headline_only=False)
    assert "clean ece" in wide.columns
    assert "attack:pgd eps=8/255 attack_success_rate" in wide.columns
    assert wide.shape == (3, 6)


def test_pivot_of_nothing(rows: pd.DataFrame) -> None:
    assert lb.pivot(lb.long_table(rows.iloc[0:0])).empty


@pytest.mark.parametrize(("value", "text"), [
    (8 / 255, "8/255"), (3 / 255, "3/255"), (1 / 255, "1/255"), (0.5, "0.5"), (0.2, "0.2"),
    (1.0, "1"), (0.0, "0"), (0.0123456, "0.0123"), (float("inf"), "inf"), (3, "3"),
    ("int8", "int8"), ({"a": 1}, '{"a":1}'), (True, "True"),
])
def test_format_value(value: object, text: str) -> None:
    assert lb.format_value(value) == text


# --- text formats --------------------------------------------------------------------------------

def test_csv(rows: pd.DataFrame) -> None:
    text = lb.to_text(lb.pivot(lb.long_table(rows)), "csv")
    lines = text.strip().splitlines()
    assert lines[0] == ("model,defense,clean accuracy,attack:pgd eps=3/255 robust_accuracy,"
                        "attack:pgd eps=8/255 robust_accuracy")
    assert lines[1] == "vit,none,0.9,0.45,0.3"
    assert len(lines) == 4


def test_markdown(rows: pd.DataFrame) -> None:
    text = lb.to_text(lb.pivot(lb.long_table(rows)), "markdown")
    lines = text.splitlines()
    assert lines[0] == ("| model | defense | clean accuracy | attack:pgd eps=3/255 robust_accuracy "
                        "| attack:pgd eps=8/255 robust_accuracy |")
    assert lines[1] == "|---|---|---|---|---|"
    assert lines[2] == "| vit | none | 90.0 | 45.0 | 30.0 |"
    assert lines[4] == "| deit | none | 80.0 | 40.0 | 26.0 |"


def test_terminal_table(rows: pd.DataFrame) -> None:
    text = lb.to_text(lb.pivot(lb.long_table(rows)), "table")
    lines = text.splitlines()
    assert lines[0].split() == ["vit/none", "vit/temperature_scaling(temperature=2)", "deit/none"]
    assert lines[1].split() == ["clean", "accuracy", "90.0", "88.0", "80.0"]
    assert lines[3].split()[-3:] == ["30.0", "29.0", "26.0"]
    assert len({len(line) for line in lines}) == 1  # right-aligned columns


def test_format_cell() -> None:
    assert lb.format_cell("clean accuracy", 0.9) == "90.0"
    assert lb.format_cell("clean ece", 0.0512) == "0.051"
    assert lb.format_cell("clean accuracy", float("nan")) == ""


def test_json_round_trips(rows: pd.DataFrame) -> None:
    table = lb.long_table(rows)
    records = json.loads(lb.to_json(table))
    assert len(records) == len(table)
    for record, (_, row) in zip(records, table.iterrows(), strict=False):
        assert set(record) == set(lb.LONG_COLUMNS) - {"examples"}  # bitmaps stay internal
        assert isinstance(record["params"], dict)
        assert canonical_json(record["params"]) == row["params"]
        assert record["value"] == pytest.approx(row["value"])
        assert record["n"] == row["n"] and isinstance(record["n"], int)
        for key in ("suite", "model", "defense", "scenario", "metric"):
            assert record[key] == row[key]
    ece = next(r for r in records if r["metric"] == "ece")
    assert ece["ci_low"] is None and ece["ci_high"] is None
    pgd8 = next(r for r in records if r["metric"] == "robust_accuracy"
                and r["params"]["eps"] == pytest.approx(8 / 255) and r["model"] == "vit"
                and r["defense"] == "none")
    assert pgd8["params"] == {"eps": 8 / 255, "steps": 10}
    assert pgd8["ci_low"] < pgd8["value"] < pgd8["ci_high"]
    defended = next(r for r in records if r["defense"] == "temperature_scaling")
    assert defended["params"]["defense_params"] == {"temperature": 2.0}
