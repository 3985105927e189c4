"""The seed papers' suites (suites/papers/) and the README table generated from them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAPERS = sorted((REPO / "suites" / "papers").glob("*.yaml"))


def test_there_is_a_suite_per_seed_paper() -> None:
    stems = {p.stem.split("_", 1)[1] for p in PAPERS}
    assert stems == {"patch", "dta", "compressed", "smoothed", "polyphase", "tap_adl",
                     "layershuffle", "robust_learners"}


@pytest.mark.parametrize("path", PAPERS, ids=[p.stem for p in PAPERS])
def test_paper_suite_states_its_claims(path: Path) -> None:
    from robustbench_vit.config.load import load_suite

    suite = load_suite(path)
    assert suite.name.startswith("paper_") and suite.description
    assert suite.gates.checks, "a paper's suite encodes its claims as gates"
    for gate in suite.gates.checks:
        assert gate.claim and gate.paper, gate
        if gate.expect == "fail":
            # a claim that does not hold here says why, with numbers measured here
            assert gate.reason and any(ch.isdigit() for ch in gate.reason), gate
    # small enough for minutes on 2 cores: a few dozen cells at most, on a few hundred images
    cells = suite.cells()
    assert len(cells) <= 40
    assert all((c.data.n_examples or 450) <= 450 for c in cells)


@pytest.mark.parametrize("path", PAPERS, ids=[p.stem for p in PAPERS])
def test_paper_suite_plans_without_unexpected_skips(path: Path, rbv_bin: str) -> None:
    proc = subprocess.run([rbv_bin, "validate", str(path)], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in proc.stdout


def test_findings_table_reports_unmeasured_claims_without_evaluating(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "paper_findings.py"),
                           "--results", str(tmp_path / "results")],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("| ")][1:]
    gates = sum(len(load(p).gates.checks) for p in PAPERS)
    assert len(lines) == gates
    assert all("not measured" in ln and "gate failing" in ln for ln in lines)
    assert not (tmp_path / "results").exists()


def test_readme_table_is_between_its_markers() -> None:
    text = (REPO / "README.md").read_text()
    start, end = "<!-- paper-findings:start -->", "<!-- paper-findings:end -->"
    assert text.count(start) == 1 and text.count(end) == 1
    table = text.split(start, 1)[1].split(end, 1)[0]
    assert table.lstrip().startswith("| Paper | Claim |")


def load(path: Path) -> object:
    from robustbench_vit.config.load import load_suite

    return load_suite(path)
