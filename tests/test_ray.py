"""The Ray runner on one local Ray cluster: same numbers as local, chunking, faults, resume."""

from __future__ import annotations

import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from robustbench_vit.config.load import load_suite
from robustbench_vit.core.cells import Cell, DataConfig, ModelConfig
from robustbench_vit.core.errors import RbvError
from robustbench_vit.execution.chunks import chunk_spans, merge_chunks
from robustbench_vit.execution.evaluate import evaluate_cell
from robustbench_vit.execution.run import RUNNERS, run_suite
from robustbench_vit.execution.runners.base import NullProgress
from robustbench_vit.results.store import ResultStore
from robustbench_vit.results.table import long_table

pytestmark = pytest.mark.ray
TESTS = Path(__file__).resolve().parent
SUMMARY = re.compile(r"(\d+) ok, (\d+) skipped, (\d+) errors, (\d+) already stored")
SUITE = """\
suite: ray_test
seed: 0
device: cpu
data: {{dataset: digits, split: test, image_size: 32, n_examples: 50, batch_size: 10}}
models:
  - {{name: vit, source: "zoo:digits_vit"}}
scenarios:
  - {{kind: clean}}
  - {{kind: attack, name: pgd, steps: {steps}, sweep: {{eps: {eps}}}}}
  - {{kind: shift, mode: circular, max_shift: 4, passes: 2}}
{extra}"""
# square with few queries: its numbers change with the per-batch seed, so a chunk that seeded its
# batches from its own start (not the batch's index in the cell) would fail the chunking test
SQUARE = "  - {kind: attack, name: square, eps: 8/255, n_queries: 10}\n"


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """One local Ray cluster (2 CPUs) for the module; workers register the test scenarios."""
    ray = pytest.importorskip("ray")
    import ray_plugin

    ray_plugin.register()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR,
             runtime_env={"env_vars": {"PYTHONPATH": str(TESTS)},
                          "worker_process_setup_hook": "ray_plugin.register"})
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def write_suite(path: Path, eps: str = "[2/255, 8/255]", steps: int = 5, extra: str = "") -> Path:
    path.write_text(SUITE.format(eps=eps, steps=steps, extra=extra))
    return path


def values(results: Path) -> dict[tuple[str, str, str, str], tuple[Any, ...]]:
    """(cell_key, scenario, params, metric) -> (value, flags, per-example outcomes), for every
    row (all must be ok)."""
    with ResultStore(results) as store:
        df = store.frame()
    assert set(df["status"]) == {"ok"}, df[df["status"] != "ok"]["error"].tolist()
    keys = zip(df["cell_key"], df["scenario"], df["params"], df["metric"], strict=True)
    out = dict(zip(keys, zip(df["value"], df["flags"], df["examples"], strict=True),
                   strict=True))
    assert len(out) == len(df), "duplicate rows"
    return out


def ray_runner(**options: Any) -> Any:
    return RUNNERS.get("ray")({"backend": "ray", **options})


def tiny_cell(kind: str, **params: Any) -> Cell:
    """A cell on a tiny random timm ViT and synthetic images (no zoo, no files)."""
    kwargs = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
              "num_classes": 10}
    return Cell(suite="ray_unit", suite_version=1, defense="none", defense_params={},
                model=ModelConfig(name="tiny", source="timm:vit_tiny_patch16_224", kwargs=kwargs),
                scenario_kind=kind, scenario_params=params, seed=0,
                data=DataConfig(dataset="synthetic", params={"size": 16, "image_size": 32},
                                batch_size=8))


def stored_rows(db: Path, query: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if not db.is_file():
        return []
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute(query, args).fetchall()
        finally:
            conn.close()
    except sqlite3.OperationalError:  # schema not created yet
        return []


# --- same numbers -------------------------------------------------------------------------------

def test_ray_gives_the_local_numbers(cluster: str, tmp_path: Path) -> None:
    suite = load_suite(write_suite(tmp_path / "suite.yaml", extra=SQUARE))
    local = run_suite(suite, tmp_path / "local", backend="local")
    on_ray = run_suite(suite, tmp_path / "ray", backend="ray")
    assert (local.ok, on_ray.ok, on_ray.errors) == (5, 5, [])
    a, b = values(tmp_path / "local"), values(tmp_path / "ray")
    assert a == b  # values, flags and per-example outcomes
    metrics = {key[3] for key in a}
    assert {"accuracy", "ece", "robust_accuracy", "attack_success_rate",
            "unbounded_success_rate", "convergence_gap"} <= metrics
    with_bits = [key for key, (_, _, bits) in a.items() if isinstance(bits, str)]
    assert len(with_bits) == 4  # clean accuracy and the robust accuracy of 3 attacks
    # the worst case per image (pgd and square at 8/255) is the same from both runs
    tables = []
    for folder in ("local", "ray"):
        with ResultStore(tmp_path / folder) as store:
            table = long_table(store.frame())
        tables.append(table[table["metric"] == "worst_case_robust_accuracy"]
                      .reset_index(drop=True))
    assert len(tables[0]) == 1
    pd.testing.assert_frame_equal(tables[0], tables[1])
    again = run_suite(suite, tmp_path / "ray", backend="ray")  # everything stored: no tasks
    assert (again.already_done, again.ok) == (5, 0)


def test_chunked_and_whole_cells_give_identical_numbers(cluster: str, tmp_path: Path) -> None:
    suite = load_suite(write_suite(tmp_path / "suite.yaml", eps="[4/255]", steps=3, extra=SQUARE))
    cells = suite.cells()
    clean, pgd, shift, square = cells
    assert chunk_spans(clean, 20) == [(0, 20), (20, 40), (40, 50)]
    assert chunk_spans(pgd, 15) == [(0, 20), (20, 40), (40, 50)]  # rounded up to whole batches
    assert chunk_spans(shift, 20) is None  # not mergeable: runs whole
    assert chunk_spans(clean, 50) is None and chunk_spans(clean, None) is None
    # in-process: merged chunk statistics are exactly the whole cell's rows (PGD random start too)
    for cell in (clean, pgd, square):
        whole = evaluate_cell(cell)
        parts = [evaluate_cell(cell, span=span) for span in chunk_spans(cell, 20) or []]
        assert all(p.partial is not None and not p.measurements for p in parts)
        assert merge_chunks(cell, parts).measurements == whole.measurements
    # on Ray: one task per chunk, merged by the driver into the same stored rows
    with ResultStore(tmp_path / "whole") as store:
        ray_runner().run(cells, store, NullProgress())
    with ResultStore(tmp_path / "chunked") as store:
        summary = ray_runner(chunk_size=20).run(cells, store, NullProgress())
    assert (summary.ok, summary.errors) == (4, [])
    assert values(tmp_path / "chunked") == values(tmp_path / "whole")


# --- faults -------------------------------------------------------------------------------------

def test_a_cell_that_raises_is_an_error_row_and_the_rest_complete(cluster: str,
                                                                   tmp_path: Path) -> None:
    cells = [tiny_cell("clean"), tiny_cell("ray_test_fail"), tiny_cell("clean", ece_bins=5)]
    with ResultStore(tmp_path / "results") as store:
        summary = ray_runner().run(cells, store, NullProgress())
        df = store.frame()
    assert summary.ok == 2 and len(summary.errors) == 1
    assert "boom in a ray worker" in summary.errors[0][1]
    status = df.groupby("cell_key")["status"].first().to_dict()
    assert status == {cells[0].key: "ok", cells[1].key: "error", cells[2].key: "ok"}
    error = df[df["status"] == "error"].iloc[0]["error"]
    assert error.startswith("RuntimeError: boom in a ray worker")


def test_a_dead_worker_is_retried_and_its_cell_stored_once(cluster: str, tmp_path: Path) -> None:
    marker = tmp_path / "crashed-once"
    cells = [tiny_cell("ray_test_crash", marker=str(marker)), tiny_cell("clean")]
    with ResultStore(tmp_path / "results") as store:
        summary = ray_runner(max_retries=1).run(cells, store, NullProgress())
        df = store.frame()
    assert marker.is_file(), "the first attempt did not run (or did not crash)"
    assert (summary.ok, summary.errors) == (2, [])
    crashed = df[df["cell_key"] == cells[0].key]
    assert len(crashed) == 1 and crashed.iloc[0]["status"] == "ok"
    assert crashed.iloc[0]["value"] == 1.0 and crashed.iloc[0]["n"] == 16


def test_retries_are_bounded(cluster: str, tmp_path: Path) -> None:
    cell = tiny_cell("ray_test_crash", marker=str(tmp_path / "crashed-once"))
    with ResultStore(tmp_path / "results") as store:
        summary = ray_runner(max_retries=0).run([cell], store, NullProgress())
        df = store.frame()
    assert summary.ok == 0 and len(summary.errors) == 1
    assert len(df) == 1 and df.iloc[0]["status"] == "error"
    assert "Worker" in df.iloc[0]["error"]  # WorkerCrashedError: the worker died, no retry left
    assert [c.key for c in ResultStore(tmp_path / "results").pending([cell])] == [cell.key]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["sigkill", "ctrl-c"])
def test_driver_stopped_and_rerun_redoes_only_missing_cells(cluster: str, rbv_bin: str,
                                                            tmp_path: Path, sig: int) -> None:
    suite = write_suite(tmp_path / "suite.yaml",
                        eps="[1/255, 2/255, 3/255, 4/255, 5/255, 6/255, 8/255]", steps=10)
    n_cells = 9
    results, db = tmp_path / "results", tmp_path / "results" / "rbv.sqlite"
    count = "SELECT COUNT(DISTINCT cell_key) FROM results"
    command = [rbv_bin, "evaluate", str(suite), "--results", str(results), "-q",
               "--backend", "ray", "--address", cluster]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 150
        while not (stored_rows(db, count) or [(0,)])[0][0]:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()
            assert time.monotonic() < deadline, "no cell was stored within 150 s"
            time.sleep(0.02)
        os.kill(proc.pid, sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:  # Ctrl-C: outstanding tasks cancelled, finished cells kept, the usual message, exit 130
        assert proc.returncode == 130, (tmp_path / "first.log").read_text()
        assert "interrupted" in (tmp_path / "first.log").read_text()
    stored = stored_rows(db, count)[0][0]
    assert 1 <= stored < n_cells, "the run finished before it could be killed"
    before = stored_rows(db, "SELECT id, cell_key, run_id, value FROM results ORDER BY id")

    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    match = SUMMARY.search(done.stderr)
    assert match and tuple(map(int, match.groups())) == (n_cells - stored, 0, 0, stored)
    rows = stored_rows(db, "SELECT cell_key, metric, COUNT(*) FROM results GROUP BY 1, 2")
    assert len({key for key, _, _ in rows}) == n_cells  # no lost cells
    assert {c for _, _, c in rows} == {1}  # no duplicates
    kept = stored_rows(db, "SELECT id, cell_key, run_id, value FROM results WHERE id <= ? "
                           "ORDER BY id", (before[-1][0],))
    assert kept == before  # cells committed before the kill were not redone


# --- configuration ------------------------------------------------------------------------------

def test_runner_section_and_cli_options(tmp_path: Path) -> None:
    path = write_suite(tmp_path / "suite.yaml")
    path.write_text(path.read_text() + "runner: {backend: ray, num_cpus: 2, max_retries: 1, "
                                       "chunk_size: 25, cache_dir: /shared/rbv}\n")
    runner = load_suite(path).runner
    assert runner["backend"] == "ray" and runner["chunk_size"] == 25
    built = RUNNERS.get("ray")({**runner, "address": "auto"})
    assert (built.options.address, built.options.num_cpus, built.options.num_gpus) == ("auto", 2, 0)
    assert (built.options.max_retries, built.options.cache_dir) == (1, "/shared/rbv")
    path.write_text(path.read_text().replace("backend: ray", "backend: rya"))
    with pytest.raises(RbvError, match="runner.backend"):
        load_suite(path)


def test_missing_ray_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from robustbench_vit.execution.runners.ray import RayUnavailable

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(RayUnavailable, match=r"pip install 'robustbench_vit\[ray\]'") as info:
        ray_runner()
    assert info.value.exit_code == 2
