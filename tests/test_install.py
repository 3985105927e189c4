"""A plain `pip install .` into a clean virtual environment gives a working `rbv`.

No Makefile and no torchattacks (which is installed apart, with --no-deps): every attack is still
listed, a patch-only suite evaluates, and a pgd cell becomes an error row that says how to install
torchattacks. One venv is built per module (torch included: about two minutes on 2 cores when pip
finds the wheels locally or in its cache) and removed afterwards (it weighs several GB).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from robustbench_vit.core.plugins import load_plugins
from robustbench_vit.core.registry import ATTACKS

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
INSTALL_HINT = 'pip install --no-deps "torchattacks>=3.5,<4"'
TINY_MODEL = {
    "name": "vit", "source": "timm:vit_tiny_patch16_224",
    "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
               "num_classes": 2},
}
TINY_DATA = {"dataset": "synthetic", "classes": 2, "size": 8, "image_size": 32, "batch_size": 8}


@dataclass(frozen=True)
class Venv:
    """A clean venv with the package installed from a copy of the work tree."""

    root: Path
    work: Path
    env: dict[str, str]

    def bin(self, name: str) -> str:
        return str(self.root / "bin" / name)

    def run(self, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                              cwd=self.work, env=self.env)


def source_files() -> list[str]:
    """The work tree's files as a fresh clone plus uncommitted new files would have them (no
    .venv, caches or results)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, text=True, check=True, cwd=REPO).stdout
    return [f for f in listed.split("\0") if f and (REPO / f).is_file()]


def clean_env(venv: Path, cache: Path) -> dict[str, str]:
    """The environment without the outer venv, with the new one first on PATH."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "RBV_CACHE")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(venv),
               PYTHONNOUSERSITE="1", RBV_CACHE=str(cache), COLUMNS="200")
    return env


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Venv]:
    if shutil.which("git") is None:
        pytest.skip("git is needed to list the work tree's files")
    base = tmp_path_factory.mktemp("install")
    src = base / "src"
    for name in source_files():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, src / name)
    root, work = base / "venv", base / "work"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=120)
    env = clean_env(root, base / "cache")
    made = Venv(root=root, work=work, env=env)
    try:
        proc = made.run(made.bin("python"), "-m", "pip", "install", "--quiet", str(src),
                        timeout=900)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        yield made
    finally:  # torch and its CUDA libraries: several GB, also when the install failed
        shutil.rmtree(root, ignore_errors=True)


def write_suite(folder: Path, name: str, scenarios: list[dict[str, object]]) -> Path:
    suite = {"suite": name, "seed": 0, "device": "cpu", "data": TINY_DATA,
             "models": [TINY_MODEL], "scenarios": scenarios}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def one_line(text: str) -> str:
    """`text` with rich's line wrapping undone."""
    return " ".join(text.split())


def test_torchattacks_is_not_installed(venv: Venv) -> None:
    proc = venv.run(venv.bin("python"), "-c", "import torchattacks")
    assert proc.returncode != 0
    assert "No module named 'torchattacks'" in proc.stderr


def test_rbv_lists_every_attack(venv: Venv) -> None:
    proc = venv.run(venv.bin("rbv"), "ls", "attacks")
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0] for line in proc.stdout.splitlines()
              if line.strip() and not line[0].isspace()}
    load_plugins()
    assert listed == set(ATTACKS.names())


def test_patch_only_suite_evaluates(venv: Venv) -> None:
    suite = write_suite(venv.work, "patch_only", [
        {"kind": "clean"}, {"kind": "attack", "name": "patch", "patch_size": 8, "steps": 2}])
    results = venv.work / "patch_results"
    proc = venv.run(venv.bin("rbv"), "evaluate", str(suite), "--results", str(results), "--quiet")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 ok, 0 skipped, 0 errors" in one_line(proc.stderr), proc.stderr
    board = venv.run(venv.bin("rbv"), "leaderboard", "--results", str(results), "-f", "json")
    assert board.returncode == 0, board.stderr
    scenarios = {row["scenario"] for row in json.loads(board.stdout)}
    assert any("patch" in s for s in scenarios), scenarios


def test_pgd_without_torchattacks_is_an_error_row_with_install_hint(venv: Venv) -> None:
    suite = write_suite(venv.work, "pgd", [
        {"kind": "clean"}, {"kind": "attack", "name": "pgd", "eps": "8/255", "steps": 2}])
    results = venv.work / "pgd_results"
    proc = venv.run(venv.bin("rbv"), "evaluate", str(suite), "--results", str(results), "--quiet")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    text = one_line(proc.stderr)
    assert "1 ok, 0 skipped, 1 errors" in text, proc.stderr
    assert "MissingDependencyError: attack 'pgd' needs torchattacks" in text, proc.stderr
    assert INSTALL_HINT in text, proc.stderr
