"""ResultStore: typed rows, replace-on-commit, error retry, and resume after a hard kill."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import pandas as pd
import pytest
import timm
import torch

from robustbench_vit.core.cells import Cell, DataConfig, ModelConfig
from robustbench_vit.core.errors import ScenarioNotApplicable
from robustbench_vit.core.metrics import Measurement, proportion
from robustbench_vit.core.registry import SCENARIOS
from robustbench_vit.execution.evaluate import CellResult
from robustbench_vit.execution.runners import LocalRunner
from robustbench_vit.execution.runners.base import NullProgress
from robustbench_vit.results.store import COLUMNS, ResultStore
from robustbench_vit.scenarios.base import CellContext, Scenario

TINY_KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
               "num_classes": 10}
TINY_YAML = ("{img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2, "
             "num_classes: 10}")
EXPECTED_METRICS = {"clean": {"accuracy", "ece"},
                    "attack:pgd": {"robust_accuracy", "attack_success_rate"}}
SUMMARY = re.compile(r"(\d+) ok, (\d+) skipped, (\d+) errors, (\d+) already stored")


def make_cell(point: int = 0, kind: str = "attack", **changes: object) -> Cell:
    """A hand-made cell (no suite file needed); `point` makes distinct keys."""
    cell = Cell(
        suite="unit", suite_version=1,
        model=ModelConfig(name="tiny", source="timm:vit_tiny_patch16_224", kwargs=TINY_KWARGS,
                          fingerprint="f0"),
        defense="none", defense_params={}, scenario_kind=kind,
        scenario_params={"name": "pgd", "eps": 8 / 255, "steps": point} if kind == "attack"
        else {"point": point},
        data=DataConfig(dataset="synthetic", params={"size": 8, "image_size": 32}, batch_size=4),
        seed=0,
    )
    return replace(cell, **changes)


def ok_result(cell: Cell, robust: int = 3) -> CellResult:
    return CellResult(cell_key=cell.key, status="ok", seconds=1.5, device="cpu", measurements=[
        proportion("robust_accuracy", robust, 10),
        Measurement(metric="attack_success_rate", value=1, n=7, ci_low=0.5, ci_high=1.0,
                    extra={"queries": 100}),
    ])


@pytest.fixture()
def store(results_dir: Path) -> Iterator[ResultStore]:
    with ResultStore(results_dir) as s:
        yield s


def raw_rows(path: Path, query: str, args: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(query, args).fetchall()
    finally:
        conn.close()


# --- unit level ---------------------------------------------------------------------------------

def test_older_database_gains_missing_columns(results_dir: Path) -> None:
    results_dir.mkdir(parents=True)
    old = [c for c in COLUMNS if c != "timm_version"]
    conn = sqlite3.connect(results_dir / "rbv.sqlite")
    conn.execute(f"CREATE TABLE results (id INTEGER PRIMARY KEY, {', '.join(old)})")
    conn.execute("INSERT INTO results (suite, status) VALUES ('old', 'ok')")
    conn.commit()
    conn.close()
    with ResultStore(results_dir) as store:
        cell = make_cell()
        store.commit(cell, ok_result(cell))
        df = store.frame()
    assert list(df.columns) == COLUMNS
    assert df["timm_version"].isna().iloc[0] and df["timm_version"].iloc[-1] == timm.__version__


def test_commit_writes_one_typed_row_per_measurement(store: ResultStore) -> None:
    cell = make_cell()
    store.commit(cell, ok_result(cell))
    df = store.frame()
    assert list(df.columns) == COLUMNS
    assert len(df) == 2
    assert set(df["metric"]) == {"robust_accuracy", "attack_success_rate"}
    row = df[df["metric"] == "robust_accuracy"].iloc[0]
    assert row["value"] == pytest.approx(0.3) and row["n"] == 10
    assert 0 <= row["ci_low"] < 0.3 < row["ci_high"] <= 1
    assert (row["suite"], row["suite_version"], row["cell_key"]) == ("unit", 1, cell.key)
    assert (row["model"], row["defense"], row["scenario"]) == ("tiny", "none", "attack:pgd")
    assert (row["status"], row["error"], row["seed"], row["device"]) == ("ok", None, 0, "cpu")
    assert row["seconds"] == pytest.approx(1.5)
    assert row["run_id"] == store.run_id
    assert row["torch_version"] == importlib.metadata.version("torch")  # metadata, not an import
    assert row["timm_version"] == timm.__version__
    assert row["rbv_version"] and re.match(r"\d{4}-\d\d-\d\dT", row["created_at"])
    assert json.loads(row["params"]) == {"eps": 8 / 255, "steps": 0}
    extra = df[df["metric"] == "attack_success_rate"].iloc[0]
    assert json.loads(extra["params"]) == {"eps": 8 / 255, "steps": 0, "queries": 100}


def test_values_are_stored_as_sqlite_numbers(store: ResultStore) -> None:
    cell = make_cell()
    store.commit(cell, ok_result(cell))  # attack_success_rate is given as the int 1
    types = raw_rows(store.path, "SELECT DISTINCT typeof(value), typeof(n), typeof(ci_low), "
                                 "typeof(seconds), typeof(seed), typeof(suite_version) "
                                 "FROM results")
    assert types == [("real", "integer", "real", "real", "integer", "integer")]
    df = store.frame()
    assert df["value"].dtype == "float64"
    assert str(df["n"].dtype) == "Int64"


def test_committing_a_cell_again_replaces_its_rows(store: ResultStore) -> None:
    cell, other = make_cell(1), make_cell(2)
    store.commit(other, ok_result(other))
    store.commit(cell, ok_result(cell, robust=3))
    store.commit(cell, ok_result(cell, robust=5))
    assert store.count() == 4
    rows = raw_rows(store.path, "SELECT metric, COUNT(*) FROM results WHERE cell_key = ? "
                                "GROUP BY metric", (cell.key,))
    assert dict(rows) == {"robust_accuracy": 1, "attack_success_rate": 1}
    value = raw_rows(store.path, "SELECT value FROM results WHERE cell_key = ? AND "
                                 "metric = 'robust_accuracy'", (cell.key,))
    assert value == [(0.5,)]


def test_error_is_stored_and_pending_retries_only_errors(store: ResultStore) -> None:
    ok, skipped, failed, new = (make_cell(i) for i in range(4))
    store.commit(ok, ok_result(ok))
    store.commit(skipped, CellResult(cell_key=skipped.key, status="skipped",
                                     error="needs smoothing"))
    store.commit(failed, CellResult(cell_key=failed.key, status="error",
                                    error="RuntimeError: boom\nTraceback ..."))
    df = store.frame()
    err = df[df["cell_key"] == failed.key]
    assert len(err) == 1
    assert err.iloc[0]["status"] == "error"
    assert err.iloc[0]["error"].startswith("RuntimeError: boom")
    assert pd.isna(err.iloc[0]["metric"]) and pd.isna(err.iloc[0]["value"])
    assert df[df["cell_key"] == skipped.key].iloc[0]["error"] == "needs smoothing"
    assert store.done_keys() == {ok.key, skipped.key}
    pending = store.pending([new, ok, failed, skipped, new])
    assert [c.key for c in pending] == [new.key, failed.key]


def test_frame_filters_by_suite(store: ResultStore) -> None:
    a, b = make_cell(1), make_cell(1, suite="other")
    store.commit(a, ok_result(a))
    store.commit(b, ok_result(b))
    assert set(store.frame("other")["suite"]) == {"other"}
    assert len(store.frame()) == 4


# --- LocalRunner with a scenario registered in-process --------------------------------------------

@dataclass(frozen=True, kw_only=True)
class FlakyScenario(Scenario):
    """Test scenario: fails for points in FAILING, is not applicable for negative points."""

    kind: ClassVar[str] = "flaky_test"
    FAILING: ClassVar[set[int]] = set()
    point: int = 0

    def run(self, ctx: CellContext) -> list[Measurement]:
        if self.point in self.FAILING:
            raise RuntimeError(f"boom at point {self.point}")
        if self.point < 0:
            raise ScenarioNotApplicable("not for negative points")
        n = sum(len(y) for _, y in ctx.batches())
        return [proportion("accuracy", n, n)]


@pytest.fixture()
def flaky() -> Iterator[type[FlakyScenario]]:
    SCENARIOS.register("flaky_test", FlakyScenario)
    FlakyScenario.FAILING.clear()
    yield FlakyScenario
    FlakyScenario.FAILING.clear()
    SCENARIOS.unregister("flaky_test")


def test_local_runner_stores_errors_and_retries_them(results_dir: Path, flaky: type) -> None:
    cells = [make_cell(p, kind="flaky_test") for p in (0, 1, 2, -1)]
    flaky.FAILING.add(1)
    with ResultStore(results_dir) as store:
        first_run = store.run_id
        summary = LocalRunner().run(cells, store, NullProgress())
        assert (summary.ok, summary.skipped, len(summary.errors)) == (2, 1, 1)
        where, message = summary.errors[0]
        assert where == "tiny/none/flaky_test" and "boom at point 1" in message
        status = dict(raw_rows(store.path, "SELECT cell_key, status FROM results"))
        assert status == {cells[0].key: "ok", cells[1].key: "error", cells[2].key: "ok",
                          cells[3].key: "skipped"}
        assert [c.key for c in store.pending(cells)] == [cells[1].key]

    flaky.FAILING.clear()
    with ResultStore(results_dir) as store:
        summary = LocalRunner().run(cells, store, NullProgress())
        assert (summary.total, summary.already_done, summary.ok, summary.errors) == (4, 3, 1, [])
        rows = raw_rows(store.path, "SELECT cell_key, status, run_id FROM results")
    assert len(rows) == 4  # one accuracy row per cell, the error row replaced
    by_key = {k: (s, r) for k, s, r in rows}
    assert by_key[cells[1].key] == ("ok", store.run_id)
    assert by_key[cells[0].key] == ("ok", first_run)  # finished cells were not re-evaluated


# --- CLI: resume after SIGKILL, and a failing model ---------------------------------------------

def write_suite(path: Path, models: str, scenarios: str) -> Path:
    path.write_text(f"""\
suite: store_test
version: 1
seed: 0
device: cpu
data: {{dataset: synthetic, size: 64, image_size: 32, batch_size: 16}}
models:
{models}
scenarios:
{scenarios}
""")
    return path


TINY_MODEL = f"""\
  - name: tiny
    source: timm:vit_tiny_patch16_224
    kwargs: {TINY_YAML}
"""
PGD_SWEEP = """\
  - {kind: clean}
  - {kind: attack, name: pgd, steps: 5, indicators: false,
     sweep: {eps: [1/255, 2/255, 4/255, 8/255]}}
"""
N_CELLS = 5


def stored_cells(db: Path) -> int:
    """Distinct cell keys in the database (read-only; 0 while it does not exist yet)."""
    if not db.is_file():
        return 0
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute("SELECT COUNT(DISTINCT cell_key) FROM results").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:  # schema not created yet
        return 0


def cell_metrics(db: Path) -> dict[str, tuple[str, list[str]]]:
    rows = raw_rows(db, "SELECT cell_key, scenario, metric, status FROM results ORDER BY id")
    out: dict[str, tuple[str, list[str]]] = {}
    for key, scenario, metric, status in rows:
        assert status == "ok", (key, scenario, status)
        out.setdefault(key, (scenario, []))[1].append(metric)
    return out


def rbv(rbv_bin: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([rbv_bin, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def kill_after_first_cell(rbv_bin: str, suite: Path, results: Path) -> int:
    """Start `rbv evaluate`, SIGKILL it as soon as a cell is stored; returns the stored count."""
    log = suite.with_suffix(".log")
    with open(log, "w") as stderr:
        proc = subprocess.Popen([rbv_bin, "evaluate", str(suite), "--results", str(results), "-q"],
                                stdout=subprocess.DEVNULL, stderr=stderr)
    db = results / "rbv.sqlite"
    deadline = time.monotonic() + 240
    try:
        while stored_cells(db) == 0:
            assert proc.poll() is None, f"rbv exited early ({proc.returncode}): {log.read_text()}"
            assert time.monotonic() < deadline, "no cell was stored within 240 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    return stored_cells(db)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_resume_after_hard_kill(rbv_bin: str, tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "suite.yaml", TINY_MODEL, PGD_SWEEP)
    results = tmp_path / "results"
    db = results / "rbv.sqlite"
    stored = kill_after_first_cell(rbv_bin, suite, results)
    assert 1 <= stored < N_CELLS
    before = cell_metrics(db)
    for key, (scenario, metrics) in before.items():  # whole cells only, never half of one
        assert sorted(metrics) == sorted(EXPECTED_METRICS[scenario]), key
    first_rows = raw_rows(db, "SELECT id, cell_key, run_id, created_at FROM results")

    done = rbv(rbv_bin, "evaluate", str(suite), "--results", str(results), "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    ok, skipped, errors, already = map(int, SUMMARY.search(done.stderr).groups())
    assert (ok, skipped, errors, already) == (N_CELLS - stored, 0, 0, stored)

    after = cell_metrics(db)
    assert len(after) == N_CELLS
    counts = raw_rows(db, "SELECT cell_key, metric, COUNT(*) FROM results "
                          "GROUP BY cell_key, metric")
    assert len(counts) == 2 * N_CELLS and {c for _, _, c in counts} == {1}
    for key, (scenario, metrics) in after.items():
        assert sorted(metrics) == sorted(EXPECTED_METRICS[scenario]), key
    # rows stored before the kill were kept as they were (not re-evaluated)
    kept = raw_rows(db, "SELECT id, cell_key, run_id, created_at FROM results WHERE id <= ?",
                    (max(r[0] for r in first_rows),))
    assert kept == first_rows
    assert len({r for (r,) in raw_rows(db, "SELECT DISTINCT run_id FROM results")}) == 2


def test_cli_failing_model_is_stored_as_error(rbv_bin: str, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(3, 3)}, str(tmp_path / "wrong.safetensors"))
    bad_model = f"""\
  - name: wrong
    source: file:wrong.safetensors
    arch: vit_tiny_patch16_224
    kwargs: {TINY_YAML}
"""
    suite = write_suite(tmp_path / "suite.yaml", TINY_MODEL + bad_model, "  - {kind: clean}\n")
    results = tmp_path / "results"
    done = rbv(rbv_bin, "evaluate", str(suite), "--results", str(results), "-q", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert SUMMARY.search(done.stderr).groups() == ("1", "0", "1", "0")
    assert "ERROR wrong/none/clean" in done.stderr and "do not fit" in done.stderr
    rows = raw_rows(results / "rbv.sqlite", "SELECT model, status, metric, error FROM results")
    good = sorted((s, m) for model, s, m, _ in rows if model == "tiny")
    assert good == [("ok", "accuracy"), ("ok", "ece")]
    bad = [(s, m, e) for model, s, m, e in rows if model == "wrong"]
    assert len(bad) == 1 and bad[0][:2] == ("error", None)
    assert "ModelLoadError" in bad[0][2]
    assert "weights do not fit arch 'vit_tiny_patch16_224': Missing key(s)" in bad[0][2]
