"""Fault injection: concurrent runs on one results folder, kill -9 mid-commit and mid-cache-write,
a locked database, NaN / inf weights, an unreachable Ray address.

Runs go through the real console script; `RBV_FAULTS` (robustbench_vit.core.faults) makes a run
fail at a named point (SIGKILL, or an OSError) so each case is reproducible.
"""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from test_store import TINY_KWARGS, TINY_YAML, make_cell, ok_result

from robustbench_vit.core.errors import RbvError
from robustbench_vit.core.records import CellResult
from robustbench_vit.execution.claims import CellQueue
from robustbench_vit.results.store import ResultStore, StoreBusy, StoreError

SUMMARY = re.compile(r"(\d+) ok, (\d+) skipped, (\d+) errors, (\d+) already stored"
                     r"(?:, (\d+) done by another run)?")
SUITE = f"""\
suite: faults
seed: 0
device: cpu
data: {{dataset: synthetic, size: 48, image_size: 32, batch_size: 16}}
models:
  - name: vit
    source: timm:vit_tiny_patch16_224
    kwargs: {TINY_YAML}
scenarios:
  - {{kind: clean}}
  - {{kind: attack, name: pgd, steps: 8, indicators: false,
     sweep: {{eps: [1/255, 2/255, 3/255, 4/255, 6/255, 8/255]}}}}
  - {{kind: corruption, names: [gaussian_noise, contrast], severity: 2}}
"""
N_CELLS = 8
ROW = "cell_key, scenario, params, metric, value, n, status"


# --- helpers -------------------------------------------------------------------------------------

def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The child's environment: its own cache (corrupted images are built by the run)."""
    return {**os.environ, "RBV_CACHE": str(tmp_path / "cache"), "COLUMNS": "200", **extra}


def evaluate(rbv_bin: str, suite: Path, results: Path, tmp_path: Path,
             **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([rbv_bin, "evaluate", str(suite), "--results", str(results), "-q"],
                          capture_output=True, text=True, timeout=600, env=env(tmp_path, **extra))


def rows(db: Path, query: str = f"SELECT {ROW} FROM results") -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def summary(stderr: str) -> tuple[int, int, int, int, int]:
    found = SUMMARY.search(stderr)
    assert found, stderr[-2000:]
    ok, skipped, errors, already, elsewhere = found.groups()
    return int(ok), int(skipped), int(errors), int(already), int(elsewhere or 0)


def assert_clean_rows(db: Path, clean: list[tuple[object, ...]]) -> None:
    """Exactly the clean run's rows: same values, one row per (cell, scenario, params, metric)."""
    got = rows(db)
    assert sorted(got, key=repr) == sorted(clean, key=repr)
    dupes = rows(db, "SELECT cell_key, scenario, params, metric, COUNT(*) FROM results "
                     "GROUP BY cell_key, scenario, params, metric HAVING COUNT(*) > 1")
    assert dupes == []
    assert rows(db, "SELECT COUNT(*) FROM leases") == [(0,)]  # nobody holds anything now


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "faults.yaml"
    path.write_text(SUITE)
    return path


@pytest.fixture(scope="module")
def clean(rbv_bin: str, suite: Path, tmp_path_factory: pytest.TempPathFactory
          ) -> list[tuple[object, ...]]:
    """The rows of one uninterrupted run."""
    base = tmp_path_factory.mktemp("clean")
    done = evaluate(rbv_bin, suite, base / "results", base)
    assert done.returncode == 0, done.stderr
    assert summary(done.stderr)[:4] == (N_CELLS, 0, 0, 0)
    return rows(base / "results" / "rbv.sqlite")


# --- leases, in process ---------------------------------------------------------------------------

def test_a_cell_is_leased_by_one_run_at_a_time(tmp_path: Path) -> None:
    cell, other = make_cell(1), make_cell(2)
    with ResultStore(tmp_path) as a, ResultStore(tmp_path) as b:
        assert a.claim(cell.key, lease_seconds=60) == "mine"
        assert a.claim(cell.key, lease_seconds=60) == "mine"  # a run's own lease is its own
        assert b.claim(cell.key, lease_seconds=60) == "held"
        assert b.claim(other.key, lease_seconds=60) == "mine"
        a.commit(cell, ok_result(cell))  # the commit drops the lease
        assert a.holder(cell.key) is None
        assert b.claim(cell.key, lease_seconds=60) == "done"
        # a cell another run finished with an error is done for this run (it saw that run hold
        # it), and is retried by the next run, which did not
        failed = CellResult(cell_key=other.key, status="error", error="boom")
        b.commit(other, failed)
        assert a.claim(other.key, lease_seconds=60, finished_by=b.run_id) == "done"
        assert a.claim(other.key, lease_seconds=60) == "mine"


def test_a_stale_lease_is_taken_over(tmp_path: Path) -> None:
    cell = make_cell(1)
    with ResultStore(tmp_path) as a, ResultStore(tmp_path) as b:
        assert a.claim(cell.key, lease_seconds=60) == "mine"
        with sqlite3.connect(a.path) as conn:  # a's heartbeat stopped two minutes ago
            conn.execute("UPDATE leases SET heartbeat = heartbeat - 120")
        assert b.claim(cell.key, lease_seconds=60) == "mine"
        assert b.holder(cell.key).owner == b.run_id  # type: ignore[union-attr]


def test_a_dead_process_lease_is_taken_over_at_once(tmp_path: Path) -> None:
    cell = make_cell(1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with ResultStore(tmp_path) as a, ResultStore(tmp_path) as b:
        assert a.claim(cell.key, lease_seconds=600) == "mine"
        with sqlite3.connect(a.path) as conn:  # as if a's process were the dead one
            conn.execute("UPDATE leases SET pid = ?", (dead.pid,))
        assert b.claim(cell.key, lease_seconds=600) == "mine"


def test_the_heartbeat_keeps_a_slow_cell_leased(tmp_path: Path) -> None:
    cell = make_cell(1)
    with ResultStore(tmp_path) as a, ResultStore(tmp_path) as b:
        with CellQueue(a, [cell], lease_seconds=0.6) as queue:
            assert queue.next() == cell
            time.sleep(1.5)  # 2.5 lease periods: without the heartbeat the lease would lapse
            assert b.claim(cell.key, lease_seconds=0.6) == "held"
        assert a.holder(cell.key) is None  # released when the queue closed
        assert b.claim(cell.key, lease_seconds=0.6) == "mine"


def test_a_queue_waits_for_held_cells_and_counts_them_done_elsewhere(tmp_path: Path) -> None:
    cells = [make_cell(i) for i in range(3)]
    with ResultStore(tmp_path) as a, ResultStore(tmp_path) as b:
        assert a.claim(cells[0].key, lease_seconds=60) == "mine"

        def finish_later() -> None:
            time.sleep(0.8)
            a.sibling().commit(cells[0], ok_result(cells[0]))

        with CellQueue(b, cells, lease_seconds=60, poll_seconds=0.1) as queue:
            got = [queue.next(), queue.next()]
            assert got == cells[1:]
            worker = threading.Thread(target=finish_later)
            worker.start()
            assert queue.next() is None  # waited for a, which finished the cell
            worker.join()
        assert queue.elsewhere == [cells[0]]


# --- a busy or broken database --------------------------------------------------------------------

def hold_write_lock(db: Path, seconds: float, started: threading.Event) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    started.set()
    time.sleep(seconds)
    conn.execute("ROLLBACK")
    conn.close()


def test_a_commit_waits_out_a_busy_database(tmp_path: Path) -> None:
    cell = make_cell(1)
    with ResultStore(tmp_path) as store:
        started = threading.Event()
        holder = threading.Thread(target=hold_write_lock, args=(store.path, 7.0, started))
        holder.start()
        started.wait()
        store.commit(cell, ok_result(cell))  # sqlite's own 5 s wait runs out; the retry does not
        holder.join()
        assert store.done_keys() == {cell.key}


def test_a_database_locked_too_long_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    cell = make_cell(1)
    with ResultStore(tmp_path) as store:
        store.commit(cell, ok_result(cell, robust=3))
        store.busy_seconds = 0.5
        started = threading.Event()
        holder = threading.Thread(target=hold_write_lock, args=(store.path, 7.0, started))
        holder.start()
        started.wait()
        with pytest.raises(StoreBusy, match=r"rbv\.sqlite stayed locked") as caught:
            store.commit(cell, ok_result(cell, robust=9))
        holder.join()
        assert caught.value.exit_code == 2
        stored = store.frame().set_index("metric")["value"]
        assert stored["robust_accuracy"] == 0.3  # the stored rows are as they were


@pytest.mark.slow  # the lock outlasts the old store's 30 s sqlite wait at its first commit
def test_a_run_waits_out_a_database_locked_for_60_seconds(
        rbv_bin: str, suite: Path, clean: list[tuple[object, ...]], tmp_path: Path) -> None:
    results = tmp_path / "results"
    ResultStore(results).close()  # the database exists, so another process can lock it
    started = threading.Event()
    holder = threading.Thread(target=hold_write_lock,
                              args=(results / "rbv.sqlite", 60.0, started))
    holder.start()
    started.wait()
    done = evaluate(rbv_bin, suite, results, tmp_path)
    holder.join()
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "locked" not in done.stderr
    assert_clean_rows(results / "rbv.sqlite", clean)


@pytest.mark.parametrize("make", ["file", "garbage"])
def test_a_bad_results_path_is_a_store_error(tmp_path: Path, make: str) -> None:
    if make == "file":
        target = tmp_path / "results"
        target.write_text("not a folder")
        match = "is a file"
    else:
        target = tmp_path
        (tmp_path / "rbv.sqlite").write_bytes(b"this is not a database" * 100)
        match = "rbv.sqlite: file is not a database"
    with pytest.raises(StoreError, match=match) as caught:
        ResultStore(target)
    assert isinstance(caught.value, RbvError) and caught.value.exit_code == 2


# --- kill -9 mid-commit and mid-cache-write, then a rerun -----------------------------------------

@pytest.mark.slow  # several full runs of the console script
@pytest.mark.parametrize("fault", ["store.commit=kill@1", "store.commit=kill@5",
                                   "cache.entry=kill@1", "cache.entry=kill@2"])
def test_kill_then_rerun_gives_the_clean_rows(rbv_bin: str, suite: Path,
                                              clean: list[tuple[object, ...]], tmp_path: Path,
                                              fault: str) -> None:
    results = tmp_path / "results"
    killed = evaluate(rbv_bin, suite, results, tmp_path, RBV_FAULTS=fault)
    assert killed.returncode == -9, killed.stderr[-2000:]
    entries = list((tmp_path / "cache").rglob("*.npy"))
    if fault == "cache.entry=kill@2":
        assert len(entries) == 1  # the first entry was complete when the second was cut short
    for entry in entries:  # what the cache holds under an entry's name is a whole entry
        assert np.load(entry).shape[0] == 48
    done = evaluate(rbv_bin, suite, results, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    ok, _, errors, already, _ = summary(done.stderr)
    assert errors == 0 and ok + already == N_CELLS
    assert_clean_rows(results / "rbv.sqlite", clean)


@pytest.mark.slow  # several full runs of the console script
def test_no_space_mid_commit_exits_2_and_keeps_the_stored_cells(
        rbv_bin: str, suite: Path, clean: list[tuple[object, ...]], tmp_path: Path) -> None:
    results = tmp_path / "results"
    full = evaluate(rbv_bin, suite, results, tmp_path, RBV_FAULTS="store.commit=enospc@3")
    assert full.returncode == 2, full.stderr[-2000:]
    assert "Traceback" not in full.stderr
    assert "No space left on device" in full.stderr and "rbv.sqlite" in full.stderr
    assert len({r[0] for r in rows(results / "rbv.sqlite")}) == 2  # cells 1 and 2 kept whole
    done = evaluate(rbv_bin, suite, results, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert summary(done.stderr)[3] == 2
    assert_clean_rows(results / "rbv.sqlite", clean)


@pytest.mark.slow  # several full runs of the console script
def test_no_space_inside_a_cell_ends_the_run_with_exit_2(
        rbv_bin: str, suite: Path, clean: list[tuple[object, ...]], tmp_path: Path) -> None:
    """A full disk while a cell writes its cache is not that cell's error: the run stops with
    the path named, the cells before it stay stored, the rerun completes."""
    results = tmp_path / "results"
    full = evaluate(rbv_bin, suite, results, tmp_path, RBV_FAULTS="cache.entry=enospc")
    assert full.returncode == 2, full.stderr[-2000:]
    assert "Traceback" not in full.stderr
    message = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert len(message) == 1 and "No space left on device" in message[0]
    assert ".npy" in message[0]  # the cache entry's path
    stored = rows(results / "rbv.sqlite")
    assert {r[6] for r in stored} == {"ok"} and len({r[0] for r in stored}) == N_CELLS - 1
    done = evaluate(rbv_bin, suite, results, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_clean_rows(results / "rbv.sqlite", clean)


# --- concurrent runs ------------------------------------------------------------------------------

@pytest.mark.slow  # several full runs of the console script
@pytest.mark.parametrize("runs", [2, 3])
def test_concurrent_runs_compute_every_cell_once(rbv_bin: str, suite: Path,
                                                 clean: list[tuple[object, ...]], tmp_path: Path,
                                                 runs: int) -> None:
    results = tmp_path / "results"
    (tmp_path / "cache").mkdir()
    procs = [subprocess.Popen([rbv_bin, "evaluate", str(suite), "--results", str(results), "-q"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env(tmp_path)) for _ in range(runs)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr[-2000:]
        assert "Traceback" not in stderr
    counts = [summary(stderr) for _, stderr in outputs]
    computed = sum(ok + skipped + errors for ok, skipped, errors, _, _ in counts)
    assert computed == N_CELLS, counts  # every cell computed once, in one of the runs
    for ok, skipped, errors, already, elsewhere in counts:  # each run accounts for every cell
        assert ok + skipped + errors + already + elsewhere == N_CELLS, counts
    assert_clean_rows(results / "rbv.sqlite", clean)


# --- non-finite logits ----------------------------------------------------------------------------

@pytest.mark.parametrize("poison", ["nan", "inf"])
def test_non_finite_logits_make_error_rows_not_numbers(rbv_bin: str, tmp_path: Path,
                                                       poison: str) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    backbone = timm.create_model("vit_tiny_patch16_224", **TINY_KWARGS)
    state = backbone.state_dict()
    if poison == "nan":
        state["head.weight"][0, 0] = float("nan")
    else:  # finite weights whose logits overflow float32
        state["head.weight"].fill_(3e38)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE.replace("source: timm:vit_tiny_patch16_224",
                                   f"source: file:{tmp_path / 'w.safetensors'}\n"
                                   "    arch: vit_tiny_patch16_224"))
    done = evaluate(rbv_bin, suite, tmp_path / "results", tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    stored = rows(tmp_path / "results" / "rbv.sqlite", "SELECT status, value, error FROM results")
    assert len(stored) == N_CELLS
    word = "NaN" if poison == "nan" else "infinite"
    for status, value, error in stored:
        assert status == "error" and value is None
        assert f"returned {word} logits" in error


# --- an unreachable Ray address -------------------------------------------------------------------

def test_the_ray_probe_fails_fast_where_nothing_listens() -> None:
    from robustbench_vit.execution.runners.ray import RayConnectError, probe

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(RayConnectError, match=f"nothing answers at Ray address 127.0.0.1:{port}"):
        probe(f"127.0.0.1:{port}", timeout=5)
    assert time.monotonic() - start < 5
    with pytest.raises(RayConnectError, match="not host:port"):
        probe("localhost", timeout=5)
    with socket.socket() as listening:  # something answers: the probe passes
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        probe(f"ray://127.0.0.1:{listening.getsockname()[1]}", timeout=5)


@pytest.mark.ray
def test_an_unreachable_ray_address_exits_2_in_seconds(rbv_bin: str, suite: Path,
                                                       tmp_path: Path) -> None:
    pytest.importorskip("ray")
    start = time.monotonic()
    done = subprocess.run([rbv_bin, "evaluate", str(suite), "--results", str(tmp_path / "r"),
                           "--backend", "ray", "--address", "127.0.0.1:1", "-q"],
                          capture_output=True, text=True, timeout=120, env=env(tmp_path))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "nothing answers at Ray address 127.0.0.1:1" in done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - start < 60

