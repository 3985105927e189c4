"""Gates: threshold and baseline checks, `rbv gate`, `rbv baseline save`, and the pytest plugin.

Unit tests drive `check_gates` with hand-made long tables; the end-to-end tests evaluate a tiny
suite (random-init ViT on synthetic images, no training) and run the real console script and a real
pytest subprocess on the suite file.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest
from tiny_suite import TINY_SUITE

from robustbench_vit.config.spec import GatesSpec
from robustbench_vit.results.gates import baseline_margin, check_gates

REPO = Path(__file__).resolve().parents[1]


def row(value: float, *, model: str = "vit", defense: str = "none", scenario: str = "clean",
        metric: str = "accuracy", n: int | None = 100, **params: Any) -> dict[str, Any]:
    return {"suite": "s", "model": model, "defense": defense, "scenario": scenario,
            "params": json.dumps(params, sort_keys=True, separators=(",", ":")), "metric": metric,
            "value": value, "n": n, "ci_low": None, "ci_high": None}


def table(*rows: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def suite_with(*checks: dict[str, Any], confidence: float = 0.95) -> Any:
    return SimpleNamespace(gates=GatesSpec.model_validate(
        {"confidence": confidence, "checks": list(checks)}))


GATE = {"model": "vit", "scenario": "clean", "metric": "accuracy"}


@pytest.mark.parametrize(("bounds", "value", "passed"), [
    ({"min": 0.9}, 0.95, True), ({"min": 0.9}, 0.85, False), ({"min": 0.9}, 0.9, True),
    ({"max": 0.2}, 0.1, True), ({"max": 0.2}, 0.3, False),
    ({"min": 0.1, "max": 0.2}, 0.25, False), ({"min": 0.1, "max": 0.2}, 0.15, True),
])
def test_threshold_gate(bounds: dict[str, float], value: float, passed: bool) -> None:
    [outcome] = check_gates(suite_with({**GATE, **bounds}), table(row(value)))
    assert outcome.passed is passed
    assert outcome.value == value
    assert outcome.id == "vit/none/clean/accuracy"


def test_a_gate_that_matches_nothing_fails() -> None:
    [outcome] = check_gates(suite_with({**GATE, "min": 0.0}), table(row(0.5, model="other")))
    assert not outcome.passed
    assert "no stored result" in outcome.message


def test_patterns_and_fraction_params_select_rows() -> None:
    rows = table(row(0.8, scenario="attack:pgd", metric="robust_accuracy", eps=2 / 255),
                 row(0.4, scenario="attack:pgd", metric="robust_accuracy", eps=8 / 255),
                 row(0.7, scenario="attack:fgsm", metric="robust_accuracy", eps=2 / 255),
                 row(0.9, scenario="clean"))
    every = check_gates(suite_with({"model": "v*", "scenario": "attack:*",
                                    "metric": "robust_accuracy", "min": 0.5}), rows)
    assert [o.passed for o in every] == [True, False, True]
    assert every[1].id == "vit/none/attack:pgd[eps=8/255]/robust_accuracy"
    [one] = check_gates(suite_with({"model": "vit", "scenario": "attack:pgd", "params": {
        "eps": "2/255"}, "metric": "robust_accuracy", "min": 0.5}), rows)
    assert one.value == 0.8


def test_text_params_are_patterns() -> None:
    rows = table(row(0.1, scenario="attack:patch", metric="attack_success_rate",
                     content="corruption:snow"),
                 row(0.2, scenario="attack:patch", metric="attack_success_rate",
                     content="corruption:fog"),
                 row(0.9, scenario="attack:patch", metric="attack_success_rate",
                     content="adversarial"))
    gate = {"model": "vit", "scenario": "attack:patch", "metric": "attack_success_rate",
            "params": {"content": "corruption:*"}, "max": 1}
    assert [o.value for o in check_gates(suite_with(gate), rows)] == [0.1, 0.2]


def test_defense_pattern_matches_name_or_label() -> None:
    rows = table(row(0.6, defense="temperature_scaling", defense_params={"temperature": 2.0}),
                 row(0.9))
    by_name = check_gates(suite_with({**GATE, "defense": "temperature_scaling", "min": 0}), rows)
    assert [o.value for o in by_name] == [0.6]
    assert by_name[0].id == "vit/temperature_scaling(temperature=2)/clean/accuracy"
    by_label = check_gates(suite_with({**GATE, "defense": "*(temperature=2)", "min": 0}), rows)
    assert [o.value for o in by_label] == [0.6]


def baseline_of(*rows: dict[str, Any]) -> pd.DataFrame:
    return table(*rows).assign(suite_version=1)


@pytest.mark.parametrize(("now", "passed"), [
    (0.90, True),   # unchanged
    (0.86, True),   # 4 points down on n=200: inside the 95 % interval of the difference
    (0.80, False),  # 10 points down: outside
    (0.99, True),   # improvements never fail a baseline gate
])
def test_baseline_gate_tolerates_noise_but_not_a_regression(now: float, passed: bool) -> None:
    base = baseline_of(row(0.90, n=200))
    [outcome] = check_gates(suite_with({**GATE, "baseline": True}), table(row(now, n=200)), base)
    assert outcome.passed is passed, outcome.message


def test_baseline_margin_is_the_two_proportion_interval() -> None:
    current, old = pd.Series(row(0.9, n=200)), pd.Series(row(0.9, n=200))
    margin = baseline_margin(current, old, 1.959964)
    p = (0.9 * 200 + 1) / 202
    assert margin == pytest.approx(1.959964 * (2 * p * (1 - p) / 202) ** 0.5)
    # more images, tighter margin; a perfect score still has a width
    assert baseline_margin(pd.Series(row(0.9, n=2000)), pd.Series(row(0.9, n=2000)), 1.96) < margin
    assert baseline_margin(pd.Series(row(1.0, n=100)), pd.Series(row(1.0, n=100)), 1.96) > 0.01


def test_baseline_gate_respects_lower_is_better_metrics() -> None:
    gate = {"model": "vit", "scenario": "corruption", "metric": "mce", "baseline": True}
    base = baseline_of(row(60.0, scenario="corruption", metric="mce", n=None))
    worse = check_gates(suite_with(gate), table(row(61.0, scenario="corruption", metric="mce",
                                                    n=None)), base)
    better = check_gates(suite_with(gate), table(row(59.0, scenario="corruption", metric="mce",
                                                     n=None)), base)
    assert [worse[0].passed, better[0].passed] == [False, True]
    tolerant = check_gates(suite_with({**gate, "tolerance": 2.0}),
                           table(row(61.0, scenario="corruption", metric="mce", n=None)), base)
    assert tolerant[0].passed


def test_baseline_gate_fails_without_a_baseline_row() -> None:
    [no_file] = check_gates(suite_with({**GATE, "baseline": True}), table(row(0.9)), None)
    assert not no_file.passed and "rbv baseline save" in no_file.message
    other = baseline_of(row(0.9, model="other"))
    [no_row] = check_gates(suite_with({**GATE, "baseline": True}), table(row(0.9)), other)
    assert not no_row.passed and "no baseline value" in no_row.message


def test_two_gates_on_one_row_get_distinct_ids() -> None:
    outcomes = check_gates(suite_with({**GATE, "min": 0.5}, {**GATE, "baseline": True}),
                           table(row(0.9)), baseline_of(row(0.9)))
    assert [o.id for o in outcomes] == ["vit/none/clean/accuracy@min",
                                        "vit/none/clean/accuracy@baseline"]


def with_examples(record: dict[str, Any], bits: list[int], data: str = "slice") -> dict[str, Any]:
    import numpy as np

    from robustbench_vit.core.outcomes import ExampleBits

    encoded = ExampleBits(data=data, start=0, bits=np.array(bits, dtype=bool)).encode()
    return {**record, "examples": encoded}


DTA = {"model": "victim", "scenario": "transfer:dta", "metric": "transfer_success_rate",
       "params": {"method": "dta"}}


def dta_rows(dta: float, noise: float, n: int = 200) -> pd.DataFrame:
    # DTA's own row names its attack layer; the baselines' rows carry no layer
    return table(
        row(dta, model="victim", scenario="transfer:dta", metric="transfer_success_rate", n=n,
            method="dta", attack_layer=2),
        row(noise, model="victim", scenario="transfer:dta", metric="transfer_success_rate", n=n,
            method="random_noise", attack_layer=None))


@pytest.mark.parametrize(("dta", "noise", "by", "passed"), [
    (0.60, 0.02, 0.3, True),    # 58 points above, far beyond the margin of 0.3
    (0.34, 0.02, 0.3, False),   # 32 points: the interval's lower end is below 0.3
    (0.10, 0.02, 0.0, True),    # 8 points on n=200 each: the independent interval clears 0
    (0.02, 0.10, 0.0, False),   # the other way round
])
def test_exceeds_compares_rows_of_other_params_with_a_margin(
        dta: float, noise: float, by: float, passed: bool) -> None:
    gate = {**DTA, "exceeds": {"params": {"method": "random_noise", "attack_layer": None},
                               "by": by}}
    [outcome] = check_gates(suite_with(gate), dta_rows(dta, noise))
    assert outcome.passed is passed, outcome.message
    assert "independent samples of 200 and 200" in outcome.message
    assert outcome.reference == noise and outcome.interval is not None
    assert outcome.interval[0] < dta - noise < outcome.interval[1]
    assert outcome.id == "victim/none/transfer:dta[method=dta]/transfer_success_rate"


def test_a_negative_margin_is_a_non_inferiority_check() -> None:
    # 0.95 vs 0.96 on n=400 each: not a gain, but the difference is surely above -0.05
    rows = table(row(0.95, defense="tap", n=400), row(0.96, n=400))
    gate = {**GATE, "defense": "tap"}
    [inferior] = check_gates(suite_with({**gate, "exceeds": {"defense": "none"}}), rows)
    [noninferior] = check_gates(suite_with({**gate, "exceeds": {"defense": "none", "by": -0.05}}),
                                rows)
    [tight] = check_gates(suite_with({**gate, "exceeds": {"defense": "none", "by": -0.01}}), rows)
    assert (inferior.passed, noninferior.passed, tight.passed) == (False, True, False)
    assert "margin -0.0500" in noninferior.message


def test_exceeds_ignores_the_direction_better_than_follows_it() -> None:
    # transfer_success_rate is lower-is-better: "better than noise" means a lower success rate
    rows = dta_rows(0.6, 0.02)
    other = {"params": {"method": "random_noise", "attack_layer": None}}
    [exceeds] = check_gates(suite_with({**DTA, "exceeds": other}), rows)
    [better] = check_gates(suite_with({**DTA, "better_than": other}), rows)
    assert exceeds.passed and not better.passed, (exceeds.message, better.message)


def test_a_comparison_that_names_no_single_row_fails() -> None:
    gate = {**DTA, "exceeds": {"params": {"method": "surrogate"}}}
    [outcome] = check_gates(suite_with(gate), dta_rows(0.6, 0.02))
    assert not outcome.passed and "0 rows of victim/none match" in outcome.message
    # a null in the comparison must be absent or null: attack_layer=2 is neither
    [layer] = check_gates(suite_with({**DTA, "exceeds": {"params": {"method": "random_noise"}}}),
                          dta_rows(0.6, 0.02))
    assert not layer.passed and "0 rows" in layer.message


def test_comparisons_pair_the_same_images_when_both_rows_carry_outcomes() -> None:
    # 10 images: the ViT fooled on 6, the CNN on the same 6 and 2 more. Independently, 0.6 vs
    # 0.8 on 10 images each is no evidence; paired, 2 discordant pairs all one way still are not
    # enough, but 20 images with 8 discordant pairs are.
    vit = [1] * 6 + [0] * 4
    cnn = [1] * 8 + [0] * 2
    gate = {"model": "cnn", "scenario": "attack:patch", "metric": "attack_success_rate",
            "exceeds": {"model": "vit"}}
    rows = table(with_examples(row(0.8, model="cnn", scenario="attack:patch",
                                   metric="attack_success_rate", n=10), cnn),
                 with_examples(row(0.6, model="vit", scenario="attack:patch",
                                   metric="attack_success_rate", n=10), vit))
    [small] = check_gates(suite_with(gate), rows)
    assert not small.passed and "paired, the same 10 images" in small.message
    vit, cnn = vit * 4, [1] * 6 + [1] * 4 + [1] * 6 + [0] * 4 + [1] * 6 + [1] * 4 + [1] * 6 \
        + [0] * 4
    rows = table(with_examples(row(sum(cnn) / 40, model="cnn", scenario="attack:patch",
                                   metric="attack_success_rate", n=40), cnn),
                 with_examples(row(sum(vit) / 40, model="vit", scenario="attack:patch",
                                   metric="attack_success_rate", n=40), vit))
    [large] = check_gates(suite_with(gate), rows)
    assert large.passed, large.message
    assert "paired, the same 40 images" in large.message


def test_expected_failures_do_not_fail_the_run_but_missing_rows_do() -> None:
    from robustbench_vit.results.gates import GateReport

    claim = {**GATE, "min": 0.95, "expect": "fail", "reason": "measured: 0.90 here"}
    [xfail] = check_gates(suite_with(claim), table(row(0.90)))
    assert (xfail.verdict, xfail.passed, xfail.expected_failure) == (
        "XFAIL", False, "measured: 0.90 here")
    [xpass] = check_gates(suite_with(claim), table(row(0.97)))
    assert xpass.verdict == "XPASS"
    [missing] = check_gates(suite_with(claim), table(row(0.97, model="other")))
    assert missing.verdict == "FAILED"
    report = GateReport(outcomes=[xfail, xpass, missing], missing_cells=0)
    assert report.failed == [missing]


# --- end to end: the console script and pytest on real files ---------------------------------

TINY = TINY_SUITE.replace("suite: tiny", "suite: gated") + """\
gates:
  evaluate: true
  checks:
    - {model: vit, scenario: clean, metric: accuracy, min: 0.0, baseline: true}
    - {model: vit, scenario: "attack:pgd", metric: robust_accuracy, baseline: true}
"""
FAILING = "    - {model: vit, scenario: clean, metric: accuracy, min: 0.99}\n"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory, rbv_bin: str) -> Path:
    """A folder with the suite evaluated (results/) and its baseline saved (results/baselines/)."""
    folder = tmp_path_factory.mktemp("gated")
    (folder / "gated.yaml").write_text(TINY)
    proc = run(rbv_bin, "evaluate", "gated.yaml", "-q", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    proc = run(rbv_bin, "baseline", "save", "gated.yaml", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert (folder / "results" / "baselines" / "gated.csv").is_file()
    return folder


def test_gate_passes_against_its_own_baseline(gated: Path, rbv_bin: str) -> None:
    proc = run(rbv_bin, "gate", "gated.yaml", cwd=gated)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("PASSED") == 3  # clean + pgd at two eps
    assert "gated.yaml::vit/none/attack:pgd[eps=8/255]/robust_accuracy PASSED" in proc.stdout
    assert "3 passed" in proc.stdout


def test_gate_that_should_fail_exits_1(gated: Path, rbv_bin: str) -> None:
    (gated / "failing.yaml").write_text(TINY + FAILING)
    proc = run(rbv_bin, "gate", "failing.yaml", "--no-evaluate", cwd=gated)
    assert proc.returncode == 1
    assert "vit/none/clean/accuracy@min FAILED" in proc.stdout
    assert "< min 0.9900" in proc.stdout
    assert "1 failed, 3 passed" in proc.stdout


def test_baseline_gate_fails_when_a_number_regresses_beyond_its_interval(
        gated: Path, rbv_bin: str, tmp_path: Path) -> None:
    baselines = tmp_path / "baselines"
    baselines.mkdir()
    frame = pd.read_csv(gated / "results" / "baselines" / "gated.csv", dtype={"params": str})
    pgd = (frame["scenario"] == "attack:pgd") & (frame["metric"] == "robust_accuracy")
    inside = frame.copy()
    inside.loc[pgd, "value"] += 0.05  # now 5 points below the baseline, n=32: chance
    inside.to_csv(baselines / "gated.csv", index=False)
    proc = run(rbv_bin, "gate", "gated.yaml", "--baselines", str(baselines), cwd=gated)
    assert proc.returncode == 0, proc.stdout
    outside = frame.copy()
    outside.loc[pgd, "value"] += 0.5  # 50 points below: a regression
    outside.to_csv(baselines / "gated.csv", index=False)
    proc = run(rbv_bin, "gate", "gated.yaml", "--baselines", str(baselines), cwd=gated)
    assert proc.returncode == 1
    assert proc.stdout.count("FAILED") == 2 and "vs baseline" in proc.stdout


def test_gate_on_an_unevaluated_suite_fails_without_creating_results(
        rbv_bin: str, tmp_path: Path) -> None:
    (tmp_path / "gated.yaml").write_text(TINY)
    proc = run(rbv_bin, "gate", "gated.yaml", "--no-evaluate", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stdout.count("FAILED") == 2 and "no stored result" in proc.stdout
    assert not (tmp_path / "results").exists()


def test_baseline_save_refuses_an_incomplete_run(rbv_bin: str, tmp_path: Path) -> None:
    (tmp_path / "gated.yaml").write_text(TINY)
    proc = run(rbv_bin, "baseline", "save", "gated.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and "no results database" in proc.stderr


def test_gate_of_a_bad_suite_exits_2(rbv_bin: str, tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(TINY.replace("metric: accuracy", "metric: acuracy"))
    proc = run(rbv_bin, "gate", "bad.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "gates.checks[0].metric" in proc.stderr and "did you mean 'accuracy'" in proc.stderr


def test_pytest_collects_each_gate_as_an_item(gated: Path) -> None:
    (gated / "failing.yaml").write_text(TINY + FAILING)
    proc = run(sys.executable, "-m", "pytest", "failing.yaml", "-v", "-p", "no:cacheprovider",
               "--rootdir", str(gated), "--rbv-results", "results", cwd=gated)
    assert proc.returncode == 1, proc.stdout
    assert "failing.yaml::vit/none/clean/accuracy@min+baseline PASSED" in proc.stdout
    assert "failing.yaml::vit/none/attack:pgd/robust_accuracy PASSED" in proc.stdout
    assert "failing.yaml::vit/none/clean/accuracy@min FAILED" in proc.stdout
    # the failing item names the row that failed and why
    assert "gate failed" in proc.stdout and "1 of 1 checked row(s) failed" in proc.stdout
    assert "vit/none/clean/accuracy@min: 0.0000 < min 0.9900" in proc.stdout
    assert "1 failed, 2 passed" in proc.stdout


EXPECTED = ("    - {model: vit, scenario: clean, metric: accuracy, min: 0.99, expect: fail,\n"
            "       reason: a random-init ViT is near chance}\n")


def test_expected_failures_are_xfail_in_rbv_gate_and_pytest(gated: Path, rbv_bin: str) -> None:
    (gated / "claims.yaml").write_text(TINY + EXPECTED)
    proc = run(rbv_bin, "gate", "claims.yaml", "--no-evaluate", cwd=gated)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "vit/none/clean/accuracy@min XFAIL" in proc.stdout
    assert "expected to fail: a random-init ViT is near chance" in proc.stdout
    assert "3 passed, 1 xfailed" in proc.stdout
    proc = run(sys.executable, "-m", "pytest", "claims.yaml", "-rx", "-p", "no:cacheprovider",
               "--rootdir", str(gated), cwd=gated)
    assert proc.returncode == 0, proc.stdout
    assert "2 passed, 1 xfailed" in proc.stdout
    assert "a random-init ViT is near chance" in proc.stdout
    # an expected failure whose rows are missing is a real failure
    (gated / "claims.yaml").write_text((TINY + EXPECTED).replace("evaluate: true",
                                                                 "evaluate: false"))
    proc = run(sys.executable, "-m", "pytest", "claims.yaml", "-q", "-p", "no:cacheprovider",
               "--rootdir", str(gated), "--rbv-results", "elsewhere", cwd=gated)
    assert proc.returncode == 1 and "3 failed" in proc.stdout, proc.stdout


def test_pytest_passes_a_passing_suite(gated: Path) -> None:
    proc = run(sys.executable, "-m", "pytest", "gated.yaml", "-q", "-p", "no:cacheprovider",
               "--rootdir", str(gated), cwd=gated)
    assert proc.returncode == 0, proc.stdout
    assert "2 passed" in proc.stdout


def test_pytest_collection_never_evaluates(tmp_path: Path) -> None:
    """`--collect-only` of a suite with `evaluate: true` lists its gates and writes nothing."""
    (tmp_path / "gated.yaml").write_text(TINY + FAILING)
    proc = run(sys.executable, "-m", "pytest", "gated.yaml", "--collect-only", "-q",
               "-p", "no:cacheprovider", "--rootdir", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout
    assert "gated.yaml::vit/none/attack:pgd/robust_accuracy" in proc.stdout
    assert "3 tests collected" in proc.stdout
    assert not (tmp_path / "results").exists()


def test_pytest_collection_of_the_regression_suite_creates_no_database(tmp_path: Path) -> None:
    results = tmp_path / "results"
    proc = run(sys.executable, "-m", "pytest", str(REPO / "suites" / "regression.yaml"),
               "--collect-only", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
               "--rbv-results", str(results), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout
    assert "6 tests collected" in proc.stdout
    assert not results.exists()


def test_pytest_reports_a_bad_suite_as_a_collection_error(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(TINY.replace("min: 0.0", "min: high"))
    proc = run(sys.executable, "-m", "pytest", "bad.yaml", "-q", "-p", "no:cacheprovider",
               "--rootdir", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout
    assert "gates.checks[0].min" in proc.stdout


def test_ordinary_test_runs_do_not_collect_suites(tmp_path: Path) -> None:
    (tmp_path / "gated.yaml").write_text(TINY)
    (tmp_path / "test_nothing.py").write_text("def test_ok():\n    pass\n")
    proc = run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               "--rootdir", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout
    assert not (tmp_path / "results").exists()


def test_regression_suite_has_a_committed_baseline_for_every_baseline_gate() -> None:
    from robustbench_vit.config.load import load_suite
    from robustbench_vit.results.gates import load_baseline

    suite = load_suite(REPO / "suites" / "regression.yaml")
    assert suite.gates.evaluate and any(g.baseline for g in suite.gates.checks)
    baseline = load_baseline(suite, REPO / "results" / "baselines")
    assert baseline is not None and len(baseline) > 0
