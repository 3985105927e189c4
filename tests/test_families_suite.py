"""suites/families.yaml: every model family x every defense x every scenario is ok or skipped with
the reason the plan gave before anything ran; never an error (issue 12)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from families import FAMILIES

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "suites" / "families.yaml"
SPEC = yaml.safe_load(SUITE.read_text())
MODELS = [m["name"] for m in SPEC["models"]]
DEFENSES = [d if isinstance(d, str) else d["name"] for d in SPEC["models"][0]["defenses"]]
SCENARIOS = [s["kind"] + (f":{s['name']}" if "name" in s else "") for s in SPEC["scenarios"]]


def test_the_suite_covers_every_family_defense_and_scenario() -> None:
    from robustbench_vit.core.plugins import load_plugins
    from robustbench_vit.core.registry import DEFENSES as REGISTERED
    from robustbench_vit.core.registry import SCENARIOS as KINDS
    from robustbench_vit.models.adapters import ADAPTERS

    load_plugins()
    assert MODELS == list(FAMILIES)
    assert set(ADAPTERS.names()) - {"generic"} <= set(MODELS)
    assert set(REGISTERED.names()) <= set(DEFENSES)
    kinds = {label.split(":")[0] for label in SCENARIOS}
    assert {KINDS.get(name).kind for name in KINDS.names()} <= kinds
    assert all(m.get("defenses") is not None for m in SPEC["models"])


@pytest.fixture(scope="module")
def outcomes() -> dict[tuple[str, str, str], tuple[set[str], set[str]]]:
    """{(model, defense, scenario): (statuses, messages)} of every cell, evaluated in-process."""
    from robustbench_vit.config.load import load_suite
    from robustbench_vit.execution.evaluate import evaluate_cell
    from robustbench_vit.execution.plan import scenario_label

    found: dict[tuple[str, str, str], tuple[set[str], set[str]]] = {}
    for cell in load_suite(SUITE).cells("cpu"):
        result = evaluate_cell(cell)
        statuses, messages = found.setdefault(
            (cell.model.name, cell.defense, scenario_label(cell)), (set(), set()))
        statuses.add(result.status)
        messages.add((result.error or "").splitlines()[0] if result.error else "")
    return found


@pytest.fixture(scope="module")
def planned() -> dict[tuple[str, str, str], str]:
    """{(model, defense name, scenario): reason} of the suite's plan."""
    from robustbench_vit.config.load import load_suite
    from robustbench_vit.execution.plan import plan_skips

    return {(s.model, re.sub(r"\(.*\)$", "", s.defense), s.scenario): s.reason
            for s in plan_skips(load_suite(SUITE))}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("defense", DEFENSES)
@pytest.mark.parametrize("model", MODELS)
def test_cell_is_ok_or_skipped_as_planned(model: str, defense: str, scenario: str,
                                          outcomes: dict, planned: dict) -> None:
    statuses, messages = outcomes[(model, defense, scenario)]
    assert "error" not in statuses, messages
    reason = planned.get((model, defense, scenario))
    if reason is None:
        assert statuses == {"ok"}, f"skipped but not planned: {messages}"
    else:
        assert statuses == {"skipped"}, f"planned skip ({reason}) but ran: {statuses}"
        assert messages == {reason}, (messages, reason)


def test_readme_support_matrix_is_the_generated_one(rbv_bin: str) -> None:
    import subprocess

    generated = subprocess.run([rbv_bin, "plan", str(SUITE), "--format", "markdown"],
                               capture_output=True, text=True, check=True, cwd=REPO).stdout
    readme = (REPO / "README.md").read_text()
    start, end = "<!-- support-matrix:start -->\n", "<!-- support-matrix:end -->"
    assert start in readme and end in readme
    shown = readme.split(start, 1)[1].split(end, 1)[0]
    assert shown == generated, "README's support matrix is stale: run `make support-matrix`"
