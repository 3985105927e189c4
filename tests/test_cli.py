"""The `rbv` command line on real files: ls, validate, evaluate, leaderboard formats, exit codes.

The end-to-end flow (evaluate, then leaderboard as JSON) runs the installed console script; cheaper
variations run the same Typer app in-process. Every command gets `--results` under a tmp folder.
"""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from tiny_suite import TINY_SUITE
from typer.testing import CliRunner, Result

from robustbench_vit import load_suite
from robustbench_vit.cli import app
from robustbench_vit.core.plugins import load_plugins
from robustbench_vit.core.registry import REGISTRIES

REPO = Path(__file__).resolve().parents[1]
TINY = TINY_SUITE
LONG_KEYS = {"model", "defense", "scenario", "params", "metric", "value", "n", "ci_low", "ci_high"}


@dataclass(frozen=True)
class Evaluated:
    """A finished `rbv evaluate` of the tiny suite."""

    suite: Path
    results: Path
    proc: subprocess.CompletedProcess[str]


def rbv(rbv_bin: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the installed console script."""
    return subprocess.run([rbv_bin, *args], capture_output=True, text=True, timeout=600, cwd=cwd)


def invoke(*args: str) -> Result:
    """Run the same CLI in-process."""
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def evaluated(rbv_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Evaluated:
    folder = tmp_path_factory.mktemp("cli")
    suite = folder / "tiny.yaml"
    suite.write_text(TINY)
    results = folder / "out"
    proc = rbv(rbv_bin, "evaluate", str(suite), "--results", str(results), "--quiet", cwd=folder)
    return Evaluated(suite=suite, results=results, proc=proc)


def stored_rows(results: Path) -> list[tuple[str, str, str]]:
    """(cell_key, run_id, created_at) of every stored row."""
    with sqlite3.connect(results / "rbv.sqlite") as conn:
        return sorted(conn.execute("SELECT cell_key, run_id, created_at FROM results"))


# --- evaluate and leaderboard -----------------------------------------------------------------


def test_evaluate_runs_the_suite_and_prints_the_leaderboard(evaluated: Evaluated) -> None:
    proc = evaluated.proc
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "3 ok, 0 skipped, 0 errors, 0 already stored" in proc.stderr
    lines = proc.stdout.splitlines()
    assert any("vit" in line and "none" in line for line in lines)
    assert any("clean" in line and "accuracy" in line for line in lines)
    pgd = [line for line in lines if "attack:pgd" in line and "robust_accuracy" in line]
    assert any("1/255" in line for line in pgd) and any("8/255" in line for line in pgd)
    assert not (evaluated.suite.parent / "results").exists()  # --results was honoured


def test_leaderboard_json_is_the_long_table(evaluated: Evaluated, rbv_bin: str) -> None:
    proc = rbv(rbv_bin, "leaderboard", "--results", str(evaluated.results), "-f", "json",
               cwd=evaluated.suite.parent)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert all(LONG_KEYS <= set(row) for row in rows)
    by_metric = {(r["scenario"], r["params"].get("eps"), r["metric"]): r for r in rows}
    # the random-init model gets no synthetic image right: robust accuracy is exactly 0 of 32,
    # and no success rate over 0 attacked images is reported
    assert by_metric[("clean", None, "accuracy")]["value"] == 0
    assert len(by_metric) == len(rows) == 4
    assert set(by_metric) == {
        ("clean", None, "accuracy"), ("clean", None, "ece"),
        *(("attack:pgd", eps, "robust_accuracy") for eps in (1 / 255, 8 / 255)),
    }
    assert all((r["model"], r["defense"], r["suite"]) == ("vit", "none", "tiny") for r in rows)
    clean = by_metric[("clean", None, "accuracy")]
    assert clean["n"] == 32 and clean["ci_low"] <= clean["value"] <= clean["ci_high"]
    for eps in (1 / 255, 8 / 255):
        robust = by_metric[("attack:pgd", eps, "robust_accuracy")]
        assert robust["params"]["steps"] == 2 and robust["n"] == 32
        assert robust["ci_low"] <= robust["value"] <= clean["value"] <= 1


def test_leaderboard_csv_parses_with_pandas(evaluated: Evaluated) -> None:
    result = invoke("leaderboard", "--results", str(evaluated.results), "-f", "csv")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.stdout))
    assert list(table[["model", "defense"]].itertuples(index=False, name=None)) == [("vit", "none")]
    clean = [c for c in table.columns if c.startswith("clean") and c.endswith("accuracy")]
    assert len(clean) == 1 and 0 <= table[clean[0]].iloc[0] <= 1
    assert sum(c.startswith("attack:pgd") for c in table.columns) == 2


def test_leaderboard_markdown_has_a_header(evaluated: Evaluated) -> None:
    result = invoke("leaderboard", "--results", str(evaluated.results), "--format", "markdown")
    assert result.exit_code == 0, result.output
    header, rule, *body = result.stdout.strip().splitlines()
    assert header.startswith("| model | defense |") and "clean" in header
    assert set(rule) <= set("|-:") and rule.count("|") == header.count("|")
    assert len(body) == 1 and body[0].startswith("| vit | none |")


def test_leaderboard_filters_by_suite(evaluated: Evaluated) -> None:
    result = invoke("leaderboard", "--results", str(evaluated.results), "--suite", "other",
                    "-f", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []


def test_rerun_reports_stored_cells_and_adds_no_rows(evaluated: Evaluated) -> None:
    before = stored_rows(evaluated.results)
    result = invoke("evaluate", str(evaluated.suite), "--results", str(evaluated.results), "-q")
    assert result.exit_code == 0, result.output
    assert "0 ok, 0 skipped, 0 errors, 3 already stored" in result.stderr
    assert stored_rows(evaluated.results) == before  # same rows: not evaluated again


def test_leaderboard_on_an_empty_folder_exits_2(tmp_path: Path) -> None:
    result = invoke("leaderboard", "--results", str(tmp_path))
    assert result.exit_code == 2
    assert f"no results database in {tmp_path}" in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing created


@pytest.mark.parametrize("fmt", ["xml", "JSON", ""])
def test_leaderboard_bad_format_exits_2(fmt: str, tmp_path: Path) -> None:
    result = invoke("leaderboard", "--results", str(tmp_path), "-f", fmt)
    assert result.exit_code == 2
    assert "--format must be table, csv, json or markdown" in result.stderr


def test_evaluate_of_a_bad_suite_exits_2_and_stores_nothing(tmp_path: Path) -> None:
    suite = tmp_path / "bad.yaml"
    suite.write_text(TINY.replace("name: pgd", "name: pgdd"))
    result = invoke("evaluate", str(suite), "--results", str(tmp_path / "out"), "-q")
    assert result.exit_code == 2
    assert f"{suite}: scenarios[1].name: unknown attack 'pgdd'" in result.stderr
    assert not (tmp_path / "out" / "rbv.sqlite").exists()


# --- validate ---------------------------------------------------------------------------------


def test_validate_quickstart(rbv_bin: str, tmp_path: Path) -> None:
    quickstart = REPO / "suites" / "quickstart.yaml"
    proc = rbv(rbv_bin, "validate", str(quickstart), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cells = len(load_suite(quickstart).cells())
    first, plan, *skips = proc.stdout.strip().splitlines()
    assert first.endswith(f"{cells} cells")
    # the plan: what will be skipped, and why, before anything runs
    assert plan == f"plan: {len(skips)} model / defense / scenario combinations will be skipped:"
    assert "  skip vit / none / certify: certify needs the smoothing defense, not NoDefense" \
        in skips
    assert list(tmp_path.iterdir()) == []  # validate writes nothing


def test_plan_lists_family_skips_and_the_support_matrix(rbv_bin: str, tmp_path: Path) -> None:
    suite = tmp_path / "families.yaml"
    suite.write_text(
        "suite: fam\ndata: {dataset: digits, split: test, image_size: 32, n_examples: 4}\n"
        "models:\n"
        "  - {name: cnn, source: 'timm:resnet18', kwargs: {num_classes: 10},\n"
        "     defenses: [none, temperature_scaling]}\n"
        "scenarios:\n  - {kind: clean}\n  - {kind: layer_order, permutations: 2}\n")
    proc = rbv(rbv_bin, "plan", str(suite), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "plan: 3 model / defense / scenario combinations will be skipped:"
    assert "  skip cnn / temperature_scaling / clean: resnet: a ResNet has no attention" in lines
    assert any(line.startswith("  skip cnn / none / layer_order: resnet:") for line in lines)
    table = rbv(rbv_bin, "plan", str(suite), "--format", "markdown", cwd=tmp_path).stdout
    assert "| cnn | ✓ | ✗ 1 |" in table and "1. resnet: a ResNet has no attention" in table


# --- ls ---------------------------------------------------------------------------------------


def listed(stdout: str) -> dict[str, str]:
    """{name: description} from `rbv ls` output (parameter lines are indented)."""
    entries = [line.split(maxsplit=1) for line in stdout.splitlines() if line and line[0] != " "]
    return {parts[0]: parts[1] if len(parts) > 1 else "" for parts in entries}


@pytest.mark.parametrize("kind", list(REGISTRIES))
def test_ls_lists_every_registered_name_with_its_description(kind: str) -> None:
    load_plugins()
    registry = REGISTRIES[kind]
    result = invoke("ls", kind)
    assert result.exit_code == 0, result.output
    assert listed(result.stdout) == {name: registry.describe(name) for name in registry.names()}


def test_ls_attacks_shows_parameters(rbv_bin: str, tmp_path: Path) -> None:
    proc = rbv(rbv_bin, "ls", "attacks", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    pgd = next(i for i, line in enumerate(lines) if line.startswith("pgd "))
    assert lines[pgd].split(maxsplit=1)[1].startswith("PGD")
    params = lines[pgd + 1].strip()
    assert params.startswith("[") and params.endswith("]")
    assert "norm='Linf'" in params and "steps=10" in params and "eps=" in params
    assert {"pgd", "fgsm"} <= set(listed(proc.stdout))


def test_ls_kinds_are_the_registries() -> None:
    from robustbench_vit.cli import KINDS

    assert sorted(KINDS) == sorted(REGISTRIES)


def test_ls_unknown_kind_exits_2() -> None:
    result = invoke("ls", "nonsense")
    assert result.exit_code == 2
    assert "unknown kind 'nonsense'" in result.stderr
    assert all(kind in result.stderr for kind in ("attacks", "defenses", "zoo"))
    assert result.stdout == ""
