"""Hostile results inputs (issue 17, findings 6 and 8).

Baseline CSVs with duplicated rows, non-numeric or out-of-range values or missing columns; a
results database that is corrupt, foreign, malformed row by row, or in a read-only folder; and
the pytest plugin's collection errors and relative folders. Each ends in a located message and
exit 2 — or, for a read-only folder, simply works — never a traceback or a silent choice.
"""

from __future__ import annotations

import csv
import functools
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from test_store import make_cell, ok_result
from tiny_suite import TINY_SUITE

from robustbench_vit.results.gates import BaselineError, load_baseline
from robustbench_vit.results.store import COLUMNS, ResultStore, StoreError

GATED = TINY_SUITE + """\
gates:
  checks:
    - {model: vit, scenario: clean, metric: accuracy, min: 0.0, baseline: true}
"""
HEADER = ["suite", "suite_version", "model", "defense", "scenario", "params", "metric", "value",
          "n", "ci_low", "ci_high"]
CLEAN = {"suite": "tiny", "suite_version": "1", "model": "vit", "defense": "none",
         "scenario": "clean", "params": '{"ece_bins":15}', "metric": "accuracy", "value": "0.5",
         "n": "32", "ci_low": "0.3", "ci_high": "0.7"}
PGD = {**CLEAN, "scenario": "attack:pgd", "params": '{"eps":0.03137254901960784}',
       "metric": "robust_accuracy", "value": "0.25"}


def write_baseline(folder: Path, *rows: dict[str, str], header: list[str] = HEADER) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def load(folder: Path) -> Any:
    return load_baseline(SimpleNamespace(name="tiny", version=1), folder)  # type: ignore[arg-type]


def run(*args: str, cwd: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=300, cwd=cwd,
                          **kwargs)


# --- finding 6: baseline CSVs ---------------------------------------------------------------

def test_a_valid_baseline_loads_typed_with_canonical_params(tmp_path: Path) -> None:
    write_baseline(tmp_path, {**CLEAN, "params": '{ "ece_bins": 15 }'}, {**PGD, "n": ""})
    frame = load(tmp_path)
    assert list(frame["params"]) == ['{"ece_bins":15}', '{"eps":0.03137254901960784}']
    assert list(frame["value"]) == [0.5, 0.25] and frame["n"].isna().tolist() == [False, True]


@pytest.mark.parametrize(("column", "text", "message"), [
    ("value", "abc", "line 3, column value: 'abc' is not a number"),
    ("value", "-0.2", "line 3, column value: -0.2 is outside [0, 1]"),
    ("value", "7", "line 3, column value: 7.0 is outside [0, 1]"),
    ("n", "-5", "line 3, column n: '-5' is not a count"),
    ("n", "12.5", "line 3, column n: '12.5' is not a count"),
    ("ci_low", "low", "line 3, column ci_low: 'low' is not a number"),
    ("ci_high", "0.1", "line 3, columns ci_low, ci_high: 0.3 > 0.1"),
    ("params", "{oops", "line 3, column params: '{oops' is not JSON"),
    ("params", "[1, 2]", "line 3, column params: '[1, 2]' is not a JSON object"),
    ("suite_version", "one", "line 3, column suite_version: 'one' is not a number"),
    ("model", "", "line 3, column model: '' is empty"),
])
def test_a_bad_baseline_value_is_located(tmp_path: Path, column: str, text: str,
                                         message: str) -> None:
    path = write_baseline(tmp_path, CLEAN, {**PGD, column: text})
    with pytest.raises(BaselineError) as caught:
        load(tmp_path)
    assert str(caught.value).startswith(f"{path}: {message}"), str(caught.value)
    assert caught.value.exit_code == 2


def test_a_negative_value_of_a_metric_that_is_no_proportion_is_kept(tmp_path: Path) -> None:
    # relative mCE is below 0 when corruptions hurt less than clean errors: a real value
    write_baseline(tmp_path, {**CLEAN, "scenario": "corruption", "metric": "relative_mce",
                              "value": "-0.4", "n": "", "ci_low": "", "ci_high": ""})
    assert list(load(tmp_path)["value"]) == [-0.4]


def test_a_baseline_missing_a_column_names_it(tmp_path: Path) -> None:
    path = write_baseline(tmp_path, CLEAN, header=[c for c in HEADER if c != "value"])
    with pytest.raises(BaselineError, match=r"line 1 \(header\): missing columns value") as caught:
        load(tmp_path)
    assert str(caught.value).startswith(str(path))


@pytest.mark.parametrize(("content", "message"), [
    (b"", "empty, not a baseline CSV"),
    (b"\xff\xfe\x00garbage", "not a UTF-8 text file"),
    (",".join(HEADER + ["value"]).encode() + b"\n", "columns named twice: value"),
    (",".join(HEADER).encode() + b"\ntiny,1,vit\n", "line 2: 3 fields, the header has 11"),
])
def test_a_file_that_is_no_baseline_csv_is_a_message(tmp_path: Path, content: bytes,
                                                     message: str) -> None:
    (tmp_path / "tiny.csv").write_bytes(content)
    with pytest.raises(BaselineError, match=message):
        load(tmp_path)


def test_duplicated_baseline_rows_name_the_lines_and_the_key(tmp_path: Path) -> None:
    # the copy differs only in the spacing of its params: the same row all the same
    path = write_baseline(tmp_path, CLEAN, PGD, {**CLEAN, "value": "0.0",
                                                 "params": '{"ece_bins": 15}'})
    with pytest.raises(BaselineError) as caught:
        load(tmp_path)
    text = str(caught.value)
    assert text.startswith(f"{path}: lines 2 and 4: the same row twice")
    assert 'model=vit, defense=none, scenario=clean, params={"ece_bins":15}, metric=accuracy' \
        in text


def test_rbv_gate_refuses_a_baseline_with_appended_zero_copies(rbv_bin: str,
                                                               tmp_path: Path) -> None:
    """The reported attack: copies with value 0.0 appended would make every gate pass."""
    (tmp_path / "tiny.yaml").write_text(GATED)
    path = write_baseline(tmp_path / "base", CLEAN, PGD, {**CLEAN, "value": "0.0"},
                          {**PGD, "value": "0.0"})
    proc = run(rbv_bin, "gate", "tiny.yaml", "--no-evaluate", "--baselines", "base", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{Path('base') / path.name}: lines 2 and 4: the same row twice" in proc.stderr
    assert "lines 3 and 5" in proc.stderr and "Traceback" not in proc.stderr
    write_baseline(tmp_path / "base", CLEAN, {**PGD, "n": "-3"})
    proc = run(rbv_bin, "gate", "tiny.yaml", "--no-evaluate", "--baselines", "base", cwd=tmp_path)
    assert proc.returncode == 2 and "line 3, column n: '-3' is not a count" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- finding 6: the pytest plugin --------------------------------------------------------------

def test_a_non_rbv_error_while_collecting_a_suite_is_a_collection_error(tmp_path: Path) -> None:
    """An OSError while loading the suite (here injected by a conftest) is reported like any
    collection error naming the file, not as pytest's INTERNALERROR."""
    (tmp_path / "gated.yaml").write_text(GATED)
    (tmp_path / "conftest.py").write_text(
        "import robustbench_vit.config.load as load\n\n\n"
        "def _unreadable(path):\n"
        "    raise OSError(5, 'Input/output error', str(path))\n\n\n"
        "load.load_suite = _unreadable\n")
    proc = run(sys.executable, "-m", "pytest", "gated.yaml", "-p", "no:cacheprovider",
               "--rootdir", str(tmp_path), cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert "INTERNALERROR" not in output, output
    assert proc.returncode == 2, output
    assert "ERROR collecting gated.yaml" in proc.stdout
    assert "Input/output error" in proc.stdout


RELATIVE = TINY_SUITE.replace("suite: tiny", "suite: relative").replace(
    "size: 32, image_size: 32", "size: 16, image_size: 32").replace(
    "  - {kind: attack, name: pgd, steps: 2, sweep: {eps: [1/255, 8/255]}}\n", "") + """\
gates:
  evaluate: true
  checks:
    - {model: vit, scenario: clean, metric: accuracy, min: 0.0, baseline: true}
"""


def test_relative_rbv_folders_are_relative_to_where_pytest_was_started(tmp_path: Path) -> None:
    """The rootdir (here the folder of pytest.ini) is not where pytest was started: relative
    --rbv-results / --rbv-baselines follow the invocation directory, as every other relative
    path on a command line does."""
    project, here = tmp_path / "project", tmp_path / "project" / "sub"
    here.mkdir(parents=True)
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "relative.yaml").write_text(RELATIVE)
    (here / "base").mkdir()
    (here / "base" / "relative.csv").write_text(",".join(HEADER) + "\n")  # a baseline, no rows
    proc = run(sys.executable, "-m", "pytest", "../relative.yaml", "-q", "-p", "no:cacheprovider",
               "--rbv-results", "res", "--rbv-baselines", "base", cwd=here)
    assert (here / "res" / "rbv.sqlite").is_file(), proc.stdout
    assert not (project / "res").exists()
    # the baseline read is the one under sub/: it exists, and has no row for the gate
    assert "no baseline value for this row" in proc.stdout, proc.stdout
    assert "no baseline file" not in proc.stdout


# --- finding 8: a broken, foreign or malformed database ------------------------------------------

def stored(folder: Path, **cell_changes: Any) -> Path:
    """A results folder with one committed cell (two measurement rows)."""
    with ResultStore(folder) as store:
        cell = make_cell(**cell_changes)
        store.commit(cell, ok_result(cell))
    return folder / "rbv.sqlite"


def test_a_read_only_open_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(StoreError, match=f"no results database in {missing}"):
        ResultStore(missing, read_only=True)
    assert not missing.exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="is a file, not a folder"):
        ResultStore(tmp_path / "file", read_only=True)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with sqlite3.connect(foreign / "rbv.sqlite") as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    conn.close()
    with ResultStore(foreign, read_only=True) as store, \
            pytest.raises(StoreError, match="has no results table"):
        store.frame()
    with sqlite3.connect(foreign / "rbv.sqlite") as conn:  # nothing was added to it
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["notes"]
    conn.close()


def corrupt(folder: Path) -> None:
    """A database whose first page is intact and the rest overwritten."""
    db = stored(folder)
    with sqlite3.connect(db) as conn:  # enough rows for several pages
        conn.execute("UPDATE results SET error = ?", ("x" * 5000,))
    conn.close()
    data = db.read_bytes()
    db.write_bytes(data[:4096] + b"\xa5" * (len(data) - 4096))


@pytest.mark.parametrize(("make", "message"), [
    ("file", "results folder {results} is a file, not a folder"),
    ("garbage", "rbv.sqlite: file is not a database"),
    ("corrupt", "rbv.sqlite: database disk image is malformed"),
    ("foreign", "rbv.sqlite has no results table"),
])
def test_rbv_leaderboard_on_a_bad_database_is_one_line(rbv_bin: str, tmp_path: Path, make: str,
                                                       message: str) -> None:
    results = tmp_path / "results"
    if make == "file":
        results.write_text("not a folder")
    elif make == "garbage":
        results.mkdir()
        (results / "rbv.sqlite").write_bytes(b"this is not a database" * 100)
    elif make == "corrupt":
        corrupt(results)
    else:
        results.mkdir()
        with sqlite3.connect(results / "rbv.sqlite") as conn:
            conn.execute("CREATE TABLE notes (text TEXT)")
        conn.close()
    proc = run(rbv_bin, "leaderboard", "--results", str(results), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message.format(results=results) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_reading_leaves_an_older_database_as_it_was(rbv_bin: str, tmp_path: Path) -> None:
    """A database of an older version in rollback-journal mode: the leaderboard reads it
    without adding columns or tables, and without switching it to WAL."""
    results = tmp_path / "results"
    results.mkdir()
    old = [c for c in COLUMNS if c not in ("flags", "examples", "timm_version", "weights")]
    with sqlite3.connect(results / "rbv.sqlite") as conn:
        conn.execute(f"CREATE TABLE results (id INTEGER PRIMARY KEY, {', '.join(old)})")
        conn.execute("INSERT INTO results (suite, model, defense, scenario, params, metric, value,"
                     " n, status, cell_key) VALUES ('old', 'oldvit', 'none', 'clean', '{}', "
                     "'accuracy', 0.75, 100, 'ok', 'k1')")
    conn.close()
    before = (results / "rbv.sqlite").read_bytes()
    proc = run(rbv_bin, "leaderboard", "--results", str(results), "-f", "csv", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "oldvit" in proc.stdout and "0.75" in proc.stdout
    assert (results / "rbv.sqlite").read_bytes() == before
    assert sorted(p.name for p in results.iterdir()) == ["rbv.sqlite"]


BAD_ROWS = [
    ("value = 'abc'", "column value: 'abc' is not a number"),
    ("params = 'not json'", "column params: 'not json' is not a JSON object"),
    ("status = 'weird'", "column status: 'weird' is not one of ok, skipped, error"),
    ("n = -4", "column n: -4 is not a count"),
    ("flags = '{}'", "column flags: '{}' is not a JSON list"),
]


@pytest.mark.parametrize(("change", "message"), BAD_ROWS)
def test_a_malformed_row_is_reported_by_id_and_column(rbv_bin: str, tmp_path: Path, change: str,
                                                      message: str) -> None:
    results = tmp_path / "results"
    db = stored(results)
    with sqlite3.connect(db) as conn:
        conn.execute(f"UPDATE results SET {change} WHERE id = 2")
    conn.close()
    proc = run(rbv_bin, "leaderboard", "--results", str(results), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"results database {db}: malformed rows" in proc.stderr
    assert f"row id 2, {message}" in proc.stderr and "Traceback" not in proc.stderr


def test_rbv_gate_reports_a_malformed_row(rbv_bin: str, tmp_path: Path) -> None:
    results = tmp_path / "results"
    db = stored(results, suite="tiny")
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE results SET value = 'high' WHERE id = 1")
    conn.close()
    (tmp_path / "tiny.yaml").write_text(TINY_SUITE + "gates:\n  - {model: vit, scenario: clean, "
                                        "metric: accuracy, min: 0.0}\n")
    proc = run(rbv_bin, "gate", "tiny.yaml", "--no-evaluate", "--results", "results",
               cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "row id 1, column value: 'high' is not a number" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- finding 8: a read-only results folder ------------------------------------------------------

READ_ONLY = RELATIVE.replace("suite: relative", "suite: readonly").replace(
    "evaluate: true", "evaluate: false").replace(", baseline: true", "")


@functools.cache
def reader_prefix() -> tuple[str, ...]:
    """How to run a command that the mode bits bind: as ourselves, or, for root (which writes
    anywhere), in a new user namespace, where root keeps only the owner's bits of its files."""
    if os.geteuid() != 0:
        return ()
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "--user", "true"]).returncode != 0:
        pytest.skip("running as root, and `unshare --user` is not available to drop root's "
                    "right to write into a read-only folder")
    return (unshare, "--user")


def as_reader(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a command that may not write to the read-only results folder."""
    return run(*reader_prefix(), *args, cwd=cwd)


@pytest.fixture(scope="module")
def read_only(rbv_bin: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """An evaluated suite whose results folder is read-only (mode 0555)."""
    base = tmp_path_factory.mktemp("read_only")
    (base / "readonly.yaml").write_text(READ_ONLY)
    results, writable = base / "results", base / "writable"
    proc = run(rbv_bin, "evaluate", "readonly.yaml", "--results", "results", "-q", cwd=base)
    assert proc.returncode == 0, proc.stderr
    conn = sqlite3.connect(results / "rbv.sqlite")  # the last close checkpoints the WAL
    conn.execute("SELECT COUNT(*) FROM results").fetchone()
    conn.close()
    assert sorted(p.name for p in results.iterdir()) == ["rbv.sqlite"]
    writable.mkdir()
    results.chmod(0o555)
    try:
        yield SimpleNamespace(base=base, results=results, writable=writable)
    finally:
        results.chmod(0o755)


def unchanged(folder: Path) -> bool:
    return sorted(p.name for p in folder.iterdir()) == ["rbv.sqlite"]


def test_rbv_leaderboard_reads_a_read_only_folder(rbv_bin: str, read_only: Any) -> None:
    proc = as_reader(rbv_bin, "leaderboard", "--results", str(read_only.results),
                     cwd=read_only.base)
    assert proc.returncode == 0, proc.stderr
    assert "vit" in proc.stdout and "accuracy" in proc.stdout
    assert "reading it as immutable" in proc.stderr  # the folder really was read-only for it
    assert unchanged(read_only.results)


def test_rbv_gate_and_export_html_read_a_read_only_folder(rbv_bin: str, read_only: Any) -> None:
    proc = as_reader(rbv_bin, "gate", "readonly.yaml", "--no-evaluate", "--results", "results",
                     cwd=read_only.base)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
    page = read_only.writable / "page.html"
    proc = as_reader(rbv_bin, "export-html", "--results", "results", "-o", str(page),
                     cwd=read_only.base)
    assert proc.returncode == 0, proc.stderr
    assert page.is_file() and "readonly" in page.read_text()
    assert unchanged(read_only.results)


def test_pytest_gates_read_a_read_only_folder(read_only: Any) -> None:
    proc = as_reader(sys.executable, "-m", "pytest", "readonly.yaml", "-q", "-p",
                     "no:cacheprovider", "--rootdir", str(read_only.base), "--rbv-results",
                     "results", cwd=read_only.base)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
    assert unchanged(read_only.results)
