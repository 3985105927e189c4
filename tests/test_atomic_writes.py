"""Atomic writes and OS errors: a file the tool writes is whole or as it was, and an OS error ends
any command with one line naming the path and the cause, exit code 2, nothing stored lost.

Faults come from $RBV_FAULTS (robustbench_vit.core.faults) in the real console script; the writers
that run only after training or inside a cell (checkpoints, crafted examples, corrupted images) are
driven in-process with the same failpoints.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from html_results import SUITE, write_results
from tiny_suite import TINY_SUITE

from robustbench_vit import load_suite
from robustbench_vit.cli import os_error_line
from robustbench_vit.core.cache import atomic_path, save_checkpoint
from robustbench_vit.core.metrics import proportion
from robustbench_vit.core.records import CellResult
from robustbench_vit.results.store import ResultStore

CLEAN_SUITE = TINY_SUITE.replace("suite: tiny", "suite: atomic").split("  - {kind: attack")[0]
PREVIOUS = b"previous content: must survive a failed write\n"
CAUSES = {"enospc": "No space left on device", "erofs": "Read-only file system",
          "eacces": "Permission denied"}


def rbv(rbv_bin: str, *args: str, cwd: Path, faults: str = "",
        cache: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The console script with $RBV_FAULTS (and $RBV_CACHE) set."""
    env = {**os.environ, "RBV_FAULTS": faults}
    if cache is not None:
        env["RBV_CACHE"] = str(cache)
    return subprocess.run([rbv_bin, *args], capture_output=True, text=True, timeout=600, cwd=cwd,
                          env=env)


def rows(results: Path) -> list[tuple[object, ...]]:
    """Every stored row, sorted."""
    with sqlite3.connect(results / "rbv.sqlite") as conn:
        return sorted(conn.execute("SELECT * FROM results"), key=repr)


def listing(folder: Path) -> dict[str, bytes]:
    """Name -> content of every file in `folder` (hidden temporaries included)."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} if folder.is_dir() \
        else {}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with two stored suites: `results/` (the HTML test rows, suite SUITE) and
    `clean/` (every cell of atomic.yaml, so its baseline can be saved); no model runs."""
    folder = tmp_path_factory.mktemp("atomic")
    write_results(folder / "results")
    (folder / "atomic.yaml").write_text(CLEAN_SUITE)
    suite = load_suite(folder / "atomic.yaml")
    with ResultStore(folder / "clean") as store:
        for cell in suite.cells():
            store.commit(cell, CellResult(cell_key=cell.key, status="ok", device="cpu",
                                          measurements=[proportion("accuracy", 5, 16)]))
    return folder


@dataclass(frozen=True)
class Writer:
    """A command that writes `target` (relative to the work folder) from stored `results`."""

    args: tuple[str, ...]
    target: str
    results: str


WRITERS = {
    "html page": Writer(("export-html", SUITE, "--results", "results", "-o", "{out}/page.html"),
                        "{out}/page.html", "results"),
    "baseline csv": Writer(("baseline", "save", "atomic.yaml", "--results", "clean",
                            "--baselines", "{out}"), "{out}/atomic.csv", "clean"),
}


def command(writer: Writer, out: str) -> tuple[list[str], Path]:
    return [a.format(out=out) for a in writer.args], Path(writer.target.format(out=out))


# --- the console script ---------------------------------------------------------------------


@pytest.mark.parametrize("name", WRITERS)
def test_no_space_keeps_the_previous_file(name: str, work: Path, rbv_bin: str) -> None:
    args, target = command(WRITERS[name], f"nospace-{name.split()[1]}")
    (work / target).parent.mkdir()
    (work / target).write_bytes(PREVIOUS)
    before = rows(work / WRITERS[name].results)
    proc = rbv(rbv_bin, *args, cwd=work, faults="write=enospc")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: cannot write {target}: No space left on device"]
    assert listing((work / target).parent) == {target.name: PREVIOUS}  # no temporary left
    assert rows(work / WRITERS[name].results) == before
    proc = rbv(rbv_bin, *args, cwd=work)  # the same command, with space: the file is replaced
    assert proc.returncode == 0, proc.stderr
    assert (work / target).read_bytes() != PREVIOUS
    assert len(listing((work / target).parent)) == 1


@pytest.mark.parametrize("action", ["erofs", "eacces"])
def test_read_only_or_forbidden_folder_is_one_line(action: str, work: Path, rbv_bin: str) -> None:
    args, target = command(WRITERS["html page"], f"denied-{action}")
    proc = rbv(rbv_bin, *args, cwd=work, faults=f"write={action}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: ") and str(target) in line and CAUSES[action] in line
    assert listing((work / target).parent) == {}  # the folder was made, nothing left in it


def test_zoo_checkpoint_without_space_leaves_nothing_half_written(tmp_path: Path,
                                                                  rbv_bin: str) -> None:
    """`rbv train` of a recipe with a shipped checkpoint copies it into the cache (no training):
    the record is written first, then the weights; each failure leaves no weights behind."""
    cache = tmp_path / "cache"
    for nth, suffix in ((1, ".json"), (2, ".safetensors")):
        proc = rbv(rbv_bin, "train", "digits_vit", cwd=tmp_path, cache=cache,
                   faults=f"write=enospc@{nth}")
        assert proc.returncode == 2, proc.stdout + proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith(f"error: cannot write {cache / 'zoo' / 'digits_vit-'}")
        assert line.endswith(f"{suffix}: No space left on device")
        files = {p.suffix for p in (cache / "zoo").iterdir()}
        assert ".safetensors" not in files and ".tmp" not in files
    proc = rbv(rbv_bin, "train", "digits_vit", cwd=tmp_path, cache=cache)
    assert proc.returncode == 0, proc.stderr
    assert {p.suffix for p in (cache / "zoo").iterdir()} == {".json", ".safetensors", ".lock"}


@pytest.mark.parametrize("case", ["evaluate --results", "export-html -o", "baseline --baselines"])
def test_a_file_where_a_folder_should_be(case: str, work: Path, rbv_bin: str) -> None:
    blocker = f"in-the-way-{case.split()[0]}"
    (work / blocker).write_text("a file, not a folder\n")
    args = {"evaluate --results": ["evaluate", "atomic.yaml", "-q", "--results", blocker],
            "export-html -o": ["export-html", SUITE, "--results", "results",
                               "-o", f"{blocker}/page.html"],
            "baseline --baselines": ["baseline", "save", "atomic.yaml", "--results", "clean",
                                     "--baselines", blocker]}[case]
    proc = rbv(rbv_bin, *args, cwd=work)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and blocker in errors[0] and "is a file, not a folder" in errors[0]
    assert (work / blocker).read_text() == "a file, not a folder\n"


def test_kill_during_export_keeps_the_previous_page(work: Path, rbv_bin: str) -> None:
    (work / "killed").mkdir()
    (work / "killed" / "page.html").write_bytes(PREVIOUS)
    args, _ = command(WRITERS["html page"], "killed")
    proc = rbv(rbv_bin, *args, cwd=work, faults="write=kill")
    assert proc.returncode == -9, proc.stdout + proc.stderr
    after = listing(work / "killed")
    assert after.pop("page.html") == PREVIOUS
    # what the killed process left is a hidden temporary, never a name a reader opens
    assert all(n.startswith(".page.html.") and n.endswith(".tmp") for n in after), after


# --- writers inside training and cells, in-process --------------------------------------------


@pytest.fixture()
def faults(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Set $RBV_FAULTS for this process (unset again after the test)."""
    return lambda spec: monkeypatch.setenv("RBV_FAULTS", spec)


@pytest.mark.parametrize("nth, failing", [(1, ".json"), (2, ".safetensors")])
def test_checkpoint_writes_are_atomic(nth: int, failing: str, tmp_path: Path,
                                      faults: Callable[[str], None]) -> None:
    """save_checkpoint writes zoo, defended and user fine-tuned checkpoints."""
    path = tmp_path / "ckpt" / "model-abc.safetensors"
    faults(f"write=enospc@{nth}")
    with pytest.raises(OSError) as caught:
        save_checkpoint(path, torch.nn.Linear(3, 2), {"recipe": "test"})
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(path.with_suffix(failing))
    assert sorted(p.name for p in path.parent.iterdir()) == (
        ["model-abc.json"] if nth == 2 else [])  # the record first: no weights without it
    faults("")
    save_checkpoint(path, torch.nn.Linear(3, 2), {"recipe": "test"})
    assert sorted(p.suffix for p in path.parent.iterdir()) == [".json", ".safetensors"]


def test_crafted_examples_are_written_whole_and_a_damaged_entry_is_crafted_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, faults: Callable[[str], None]) -> None:
    from robustbench_vit.scenarios.transfer_compressed import CompressedTransfer

    monkeypatch.setenv("RBV_CACHE", str(tmp_path / "cache"))
    crafts: list[int] = []

    def craft(self: object, model: object, x: torch.Tensor, *args: object) -> torch.Tensor:
        crafts.append(1)
        return x + 0.5

    monkeypatch.setattr(CompressedTransfer, "craft", craft)
    scenario = CompressedTransfer(attack="fgsm", targets=[])
    ctx = SimpleNamespace(model_key="m", data_key="d", references={}, seed=0, device="cpu",
                          loader=SimpleNamespace(batch_size=4))
    x, y = torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.long)

    def crafted() -> torch.Tensor:
        return scenario.crafted(ctx, "original", SimpleNamespace(surrogate=None), x, y)

    folder = tmp_path / "cache" / "transfer"
    faults("write=enospc")
    with pytest.raises(OSError) as caught:
        crafted()
    assert caught.value.errno == errno.ENOSPC and caught.value.filename.endswith(".pt")
    assert [p.suffix for p in folder.iterdir()] == [".lock"]  # no entry, no temporary
    faults("")
    assert torch.equal(crafted(), x + 0.5) and len(crafts) == 2
    (entry,) = folder.glob("*.pt")
    entry.write_bytes(entry.read_bytes()[:100])  # damaged from outside the tool
    assert torch.equal(crafted(), x + 0.5) and len(crafts) == 3  # not trusted: crafted again
    assert torch.equal(crafted(), x + 0.5) and len(crafts) == 3  # the rewritten entry is used


@pytest.fixture()
def corrupted_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RBV_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "corrupted"


IMAGES = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)


def entries(folder: Path) -> list[str]:
    """The cache folder's files other than locks (entries and temporaries)."""
    return sorted(p.name for p in folder.iterdir() if p.suffix != ".lock")


def test_corrupted_images_entry_without_space_is_not_stored(
        corrupted_cache: Path, faults: Callable[[str], None]) -> None:
    from robustbench_vit.data.corruption_cache import cached_corruptions

    faults("cache.entry=enospc")
    with pytest.raises(OSError) as caught:
        cached_corruptions(IMAGES, ["contrast"], 1, 0, workers=1)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename.endswith(".npy")
    assert entries(corrupted_cache) == []
    faults("")
    out = cached_corruptions(IMAGES, ["contrast"], 1, 0, workers=1)
    assert [Path(caught.value.filename).name] == entries(corrupted_cache)
    assert out["contrast"].shape == IMAGES.shape


def test_corrupted_images_entry_is_reserved_before_its_memory_map_is_written(
        corrupted_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk fails when the entry is allocated (ENOSPC naming it), not with a SIGBUS when
    a page of the memory-mapped temporary is first written."""
    from robustbench_vit.data.corruption_cache import cached_corruptions

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(OSError) as caught:
        cached_corruptions(IMAGES, ["contrast"], 1, 0, workers=1)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename.endswith(".npy")
    assert entries(corrupted_cache) == []


def test_a_run_killed_while_storing_an_entry_leaves_no_entry(corrupted_cache: Path) -> None:
    script = ("import numpy as np\n"
              "from robustbench_vit.data.corruption_cache import cached_corruptions\n"
              "images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), "
              "dtype=np.uint8)\n"
              "cached_corruptions(images, ['contrast'], 1, 0, workers=1)\n")
    env = {**os.environ, "RBV_FAULTS": "cache.entry=kill"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert not [n for n in entries(corrupted_cache) if not n.startswith(".")]  # no entry named
    from robustbench_vit.data.corruption_cache import cached_corruptions, corrupt_chunk

    out = cached_corruptions(IMAGES, ["contrast"], 1, 0, workers=1)["contrast"]
    assert np.array_equal(out, corrupt_chunk(IMAGES, "contrast", 1, 0, 0))


# --- atomic_path and the one-line message ------------------------------------------------------


def test_a_write_error_without_a_file_name_names_the_target(tmp_path: Path) -> None:
    target = tmp_path / "page.html"
    target.write_bytes(PREVIOUS)
    with pytest.raises(OSError) as caught, atomic_path(target) as tmp:
        tmp.write_text("half a page")
        raise OSError(errno.ENOSPC, "No space left on device")  # as a file object's write does
    assert caught.value.filename == str(target)
    assert os_error_line(caught.value) == f"cannot write {target}: No space left on device"
    assert listing(tmp_path) == {"page.html": PREVIOUS}


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    """Not mkstemp's owner-only 0600: a page or baseline others may read, as before."""
    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "page.html") as tmp:
            tmp.write_text("<html></html>")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "page.html").stat().st_mode) == 0o644


def test_os_error_lines(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    blocked = tmp_path / "file" / "page.html"
    assert os_error_line(OSError(errno.ENOSPC, "No space left on device")) == (
        "No space left on device (ENOSPC)")
    assert os_error_line(NotADirectoryError(errno.ENOTDIR, "Not a directory", str(blocked))) == (
        f"cannot write {blocked}: {tmp_path / 'file'} is a file, not a folder")
    assert os_error_line(FileExistsError(errno.EEXIST, "File exists", str(tmp_path / "file"))) \
        == f"{tmp_path / 'file'} is a file, not a folder"
    assert os_error_line(PermissionError(errno.EACCES, "Permission denied", "out/x.csv")) == (
        "out/x.csv: Permission denied")
