"""The support matrix: which defenses and scenarios run on which model, from a suite's plan.

Rendered as two Markdown tables (model × defense; model × scenario on the undefended model),
with every skip reason as a numbered note, and the scenario skips that occur only with some
defense listed after them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Skip(Protocol):
    """A planned skip (robustbench_vit.execution.plan.PlannedSkip)."""

    @property
    def model(self) -> str: ...
    @property
    def defense(self) -> str: ...
    @property
    def scenario(self) -> str: ...
    @property
    def reason(self) -> str: ...


def support_markdown(skips: Sequence[Skip], models: list[str], defenses: list[str],
                     scenarios: list[str], undefended: str = "none") -> str:
    """Markdown tables of ✓ / ✗ⁿ with numbered reasons."""
    notes: list[str] = []

    def mark(reason: str | None) -> str:
        if reason is None:
            return "✓"
        if reason not in notes:
            notes.append(reason)
        return f"✗ {notes.index(reason) + 1}"

    by_defense = _defense_skips(skips, scenarios)
    by_scenario = {(s.model, s.scenario): s.reason for s in skips if s.defense == undefended}
    lines = ["| model | " + " | ".join(defenses) + " |",
             "|---|" + "---|" * len(defenses)]
    lines += [f"| {m} | " + " | ".join(mark(by_defense.get((m, d))) for d in defenses) + " |"
              for m in models]
    lines += ["", f"Scenarios on the undefended model (`{undefended}`):", "",
              "| model | " + " | ".join(scenarios) + " |", "|---|" + "---|" * len(scenarios)]
    lines += [f"| {m} | " + " | ".join(mark(by_scenario.get((m, s))) for s in scenarios) + " |"
              for m in models]
    lines += ["", *[f"{i}. {reason}" for i, reason in enumerate(notes, 1)]]
    extra = sorted({(s.scenario, s.defense, s.reason) for s in skips
                    if s.defense != undefended and (s.model, s.defense) not in by_defense
                    and (s.model, s.scenario) not in by_scenario})
    if extra:
        lines += ["", "Skipped only with a defense:", ""]
        lines += [f"- {scenario} with {defense}: {reason}" for scenario, defense, reason in extra]
    return "\n".join(lines) + "\n"


def _defense_skips(skips: Sequence[Skip], scenarios: list[str]) -> dict[tuple[str, str], str]:
    """{(model, defense): reason} where every scenario is skipped for one reason: the defense
    itself does not apply to the model."""
    reasons: dict[tuple[str, str], set[str]] = {}
    skipped: dict[tuple[str, str], set[str]] = {}
    for s in skips:
        reasons.setdefault((s.model, s.defense), set()).add(s.reason)
        skipped.setdefault((s.model, s.defense), set()).add(s.scenario)
    return {key: next(iter(found)) for key, found in reasons.items()
            if len(found) == 1 and set(scenarios) <= skipped[key]}
