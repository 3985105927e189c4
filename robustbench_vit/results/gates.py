"""Gates: turn stored results into pass/fail checks (threshold and baseline), for `rbv gate` and
pytest.

A gate selects rows of the suite's long table (stored rows and derived aggregates of the suite's
current cells) by shell-style patterns on model, defense and scenario, a metric, and a subset of the
parameters. Each matching row is one check:

- threshold: `min <= value <= max`;
- no_flags: the row carries no flag (no attack-failure indicator fired on it);
- better_than: the row beats the row of another model/defense (same scenario, params, metric) on
  the same images: the paired (McNemar) interval of the gain, from the per-example outcomes, lies
  above 0 — sharper than two independent proportions;
- baseline: the value may not be worse than the same row of `results/baselines/<suite>.csv` by more
  than a statistical margin plus `tolerance`. For proportions with a sample size the margin is
  z * SE of the difference of two independent proportions (Agresti-Caffo: (x+1)/(n+2), so p = 0 or 1
  still has a width), z from the suite's `confidence`; for other metrics it combines the half-widths
  of the stored confidence intervals when there are any, else it is zero. Only a change in the
  metric's bad direction fails a baseline gate.

A gate that matches no row fails: a missing result must not pass silently.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from statistics import NormalDist
from typing import Any, cast

import pandas as pd

from ..config.spec import GateSpec
from ..config.suite import Suite
from ..core.errors import RbvError
from ..core.metrics import paired_difference
from ..core.outcomes import ExampleBits
from ..core.params import parse_fraction
from ..core.plugins import load_plugins
from ..core.registry import METRICS
from .table import DEFENSE_PARAMS, defense_labels, format_value, long_table, row_flags

BASELINE_COLUMNS = ["suite", "suite_version", "model", "defense", "scenario", "params", "metric",
                    "value", "n", "ci_low", "ci_high"]
ROW_KEY = ["model", "defense", "scenario", "params", "metric"]


class BaselineError(RbvError):
    """A baseline file is missing or unreadable."""

    exit_code = 2


@dataclass(frozen=True, kw_only=True)
class GateOutcome:
    """One check of one gate on one row (or on no row, when nothing matched)."""

    gate: int
    """Index of the gate in the suite's `gates`."""
    id: str
    """Readable identity: model/defense/scenario[params]/metric (@checks when two gates share
    it)."""
    checks: str
    """What the gate checks: "min", "max", "baseline" joined by "+"."""
    passed: bool
    value: float | None
    message: str


def suite_table(suite: Suite, frame: pd.DataFrame) -> pd.DataFrame:
    """The long table (stored + derived rows) of the suite's current cells only.

    Rows of older suite versions or of cells no longer in the suite never reach a gate.
    """
    keys = {cell.key for cell in suite.cells()}
    return long_table(frame[frame["cell_key"].isin(keys)])


def missing_cells(suite: Suite, frame: pd.DataFrame) -> int:
    """How many of the suite's cells have no stored ok/skipped row."""
    done = set(frame.loc[frame["status"].isin(["ok", "skipped"]), "cell_key"])
    return sum(1 for cell in suite.cells() if cell.key not in done)


def matches(gate: GateSpec, table: pd.DataFrame) -> pd.DataFrame:
    """Rows of `table` that `gate` selects, in table order."""
    if table.empty:
        return table
    labels = defense_labels(table)
    keep = [
        fnmatch.fnmatchcase(str(row.model), gate.model)
        and (fnmatch.fnmatchcase(str(row.defense), gate.defense)
             or fnmatch.fnmatchcase(str(label), gate.defense))
        and fnmatch.fnmatchcase(str(row.scenario), gate.scenario)
        and fnmatch.fnmatchcase(str(row.metric), gate.metric)
        and _params_match(gate.params, json.loads(cast(str, row.params)))
        for row, label in zip(table.itertuples(index=False), labels, strict=False)
    ]
    return table[keep]


def _params_match(wanted: dict[str, Any], params: dict[str, Any]) -> bool:
    return all(key in params and _same(value, params[key]) for key, value in wanted.items())


def _same(wanted: Any, actual: Any) -> bool:
    wanted = parse_fraction(wanted)
    if isinstance(wanted, dict) and isinstance(actual, dict):
        return _params_match(wanted, actual)
    if isinstance(wanted, (int, float)) and isinstance(actual, (int, float)) \
            and not isinstance(wanted, bool):
        return math.isclose(float(wanted), float(actual), rel_tol=1e-6, abs_tol=1e-9)
    return bool(wanted == actual)


def row_id(row: pd.Series, defense: str, shown: list[str]) -> str:
    """"model/defense/scenario[k=v,...]/metric": `defense` is the row's label (see
    `leaderboard.defense_labels`), the params in `shown` go in brackets."""
    params = json.loads(row["params"])
    inside = ",".join(f"{k}={format_value(params.get(k))}" for k in shown)
    scenario = f"{row['scenario']}[{inside}]" if inside else row["scenario"]
    return f"{row['model']}/{defense}/{scenario}/{row['metric']}"


def _varying(rows: pd.DataFrame) -> list[str]:
    """Params (other than the defense's) that differ among `rows`: what tells them apart."""
    decoded = [json.loads(p) for p in rows["params"]]
    keys = sorted({k for p in decoded for k in p if k != DEFENSE_PARAMS})
    return [k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for p in decoded}) > 1]


def check_gates(suite: Suite, table: pd.DataFrame,
                baseline: pd.DataFrame | None = None) -> list[GateOutcome]:
    """Every check of every gate of `suite` against `table` (see `suite_table`)."""
    load_plugins()  # metric directions and kinds come from the scenarios that registered them
    z = NormalDist().inv_cdf(0.5 + float(suite.gates.confidence) / 2)
    base = _index(baseline) if baseline is not None else None
    outcomes: list[GateOutcome] = []
    for index, gate in enumerate(suite.gates.checks):
        rows = matches(gate, table)
        if rows.empty:
            outcomes.append(GateOutcome(
                gate=index, id=_pattern_id(gate), checks=_checks(gate), passed=False, value=None,
                message="no stored result matches this gate (run `rbv evaluate` on the suite, "
                        "or check the gate's model/defense/scenario/metric/params)"))
            continue
        shown = sorted(set(_varying(rows)) | (set(gate.params) - {DEFENSE_PARAMS}))
        for (_, row), label in zip(rows.iterrows(), defense_labels(rows), strict=True):
            paired = partial(_better_than, gate, row, label, table, z)
            outcomes.append(_check_row(index, gate, row, row_id(row, label, shown), base, z,
                                       paired))
    return _unique_ids(outcomes)


def _checks(gate: GateSpec) -> str:
    kinds = (("min", gate.min is not None), ("max", gate.max is not None),
             ("baseline", gate.baseline), ("no_flags", gate.no_flags),
             ("better_than", gate.better_than is not None))
    return "+".join(name for name, present in kinds if present)


def _pattern_id(gate: GateSpec) -> str:
    params = ",".join(f"{k}={v}" for k, v in sorted(gate.params.items()))
    scenario = f"{gate.scenario}[{params}]" if params else gate.scenario
    return f"{gate.model}/{gate.defense}/{scenario}/{gate.metric}"


def gate_ids(gates: list[GateSpec]) -> list[str]:
    """A readable, unique id per gate: its patterns ("model/defense/scenario[params]/metric"),
    with "@checks" added where two gates share the patterns."""
    ids = [_pattern_id(gate) for gate in gates]
    return [ident if ids.count(ident) == 1 else f"{ident}@{_checks(gate)}"
            for ident, gate in zip(ids, gates, strict=True)]


def _unique_ids(outcomes: list[GateOutcome]) -> list[GateOutcome]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        counts[outcome.id] = counts.get(outcome.id, 0) + 1
    return [o if counts[o.id] == 1 else GateOutcome(
        gate=o.gate, id=f"{o.id}@{o.checks}", checks=o.checks, passed=o.passed, value=o.value,
        message=o.message) for o in outcomes]


def _check_row(index: int, gate: GateSpec, row: pd.Series, ident: str,
               base: dict[tuple[str, ...], pd.Series] | None, z: float,
               better_than: Callable[[], tuple[bool, str]]) -> GateOutcome:
    value = float(row["value"])
    checks: list[tuple[bool, str]] = []
    if gate.min is not None:
        ok = value >= gate.min
        checks.append((ok, f"{value:.4f} {'>=' if ok else '<'} min {gate.min:.4f}"))
    if gate.max is not None:
        ok = value <= gate.max
        checks.append((ok, f"{value:.4f} {'<=' if ok else '>'} max {gate.max:.4f}"))
    if gate.baseline:
        checks.append(_against_baseline(gate, row, base, z))
    if gate.no_flags:
        flags = row_flags(row.get("flags"))
        checks.append((not flags, f"flagged: {', '.join(flags)}" if flags else "no flags"))
    if gate.better_than is not None:
        checks.append(better_than())
    failed = [text for ok, text in checks if not ok]
    return GateOutcome(gate=index, id=ident, checks=_checks(gate), passed=not failed, value=value,
                       message="; ".join(failed or [text for _, text in checks]))


def _better_than(gate: GateSpec, row: pd.Series, label: str, table: pd.DataFrame,
                 z: float) -> tuple[bool, str]:
    """Whether `row` beats the compared row on the same images beyond the paired interval."""
    other_spec = gate.better_than
    assert other_spec is not None
    model = other_spec.model or str(row["model"])
    defense = other_spec.defense or label
    params = {k: v for k, v in json.loads(row["params"]).items() if k != DEFENSE_PARAMS}
    candidates = table[(table["model"] == model) & (table["scenario"] == row["scenario"])
                       & (table["metric"] == row["metric"])]
    labels = defense_labels(candidates)
    others = [r for (_, r), lab in zip(candidates.iterrows(), labels, strict=True)
              if defense in (lab, str(r["defense"]))
              and {k: v for k, v in json.loads(r["params"]).items()
                   if k != DEFENSE_PARAMS} == params]
    if len(others) != 1:
        return False, (f"better_than: {len(others)} rows of {model}/{defense} match this row's "
                       "scenario, params and metric (need exactly one)")
    other = others[0]
    if not isinstance(row.get("examples"), str) or not isinstance(other.get("examples"), str):
        return False, "better_than: a row has no per-example outcomes to compare image by image"
    mine, theirs = (ExampleBits.decode(r["examples"]) for r in (row, other))
    if mine.data != theirs.data or len(mine.bits) != len(theirs.bits):
        return False, "better_than: the two rows were measured on different images"
    if not METRICS.get(str(row["metric"])).higher_is_better:
        mine, theirs = theirs, mine
    gain, low, high = paired_difference(int((mine.bits & ~theirs.bits).sum()),
                                        int((theirs.bits & ~mine.bits).sum()), len(mine.bits), z)
    text = (f"{float(row['value']):.4f} vs {float(other['value']):.4f} for {model}/{defense} on "
            f"the same {len(mine.bits)} images (paired interval of the gain [{low:.4f}, "
            f"{high:.4f}])")
    return low > 0, text


def _against_baseline(gate: GateSpec, row: pd.Series,
                      base: dict[tuple[str, ...], pd.Series] | None, z: float) -> tuple[bool, str]:
    if base is None:
        return False, "no baseline file (write one with `rbv baseline save SUITE`)"
    old = base.get(tuple(str(row[c]) for c in ROW_KEY))
    if old is None:
        return False, "no baseline value for this row (save the baseline again after adding it)"
    value, reference = float(row["value"]), float(old["value"])
    margin = baseline_margin(row, old, z) + float(gate.tolerance)
    higher_is_better = METRICS.get(row["metric"]).higher_is_better
    worse_by = (reference - value) if higher_is_better else (value - reference)
    text = f"{value:.4f} vs baseline {reference:.4f} (allowed change {margin:.4f})"
    return worse_by <= margin + 1e-12, text


def baseline_margin(row: pd.Series, old: pd.Series, z: float) -> float:
    """How far a value may move from its baseline by chance alone (see the module docstring)."""
    n_new, n_old = _count(row["n"]), _count(old["n"])
    metric = str(row["metric"])
    proportion = METRICS.get(metric).proportion
    if proportion and n_new and n_old:
        return z * math.sqrt(_adjusted_var(float(row["value"]), n_new)
                             + _adjusted_var(float(old["value"]), n_old))
    halves = [_half_width(r) for r in (row, old)]
    if all(h is not None for h in halves):
        return math.sqrt(sum(h * h for h in halves if h is not None))
    return 0.0


def _count(value: Any) -> int:
    return 0 if value is None or pd.isna(value) else int(value)


def _adjusted_var(p: float, n: int) -> float:
    adjusted = (p * n + 1) / (n + 2)
    return adjusted * (1 - adjusted) / (n + 2)


def _half_width(row: pd.Series) -> float | None:
    low, high = row.get("ci_low"), row.get("ci_high")
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return None
    return (float(high) - float(low)) / 2


def _index(baseline: pd.DataFrame) -> dict[tuple[str, ...], pd.Series]:
    return {tuple(str(row[c]) for c in ROW_KEY): row for _, row in baseline.iterrows()}


def baseline_path(directory: str | Path, suite: str) -> Path:
    """results/baselines/<suite>.csv under `directory`."""
    return Path(directory) / f"{suite}.csv"


def save_baseline(suite: Suite, table: pd.DataFrame, directory: str | Path) -> Path:
    """Write the suite's long table as its baseline CSV; returns the path."""
    if table.empty:
        raise BaselineError(f"no stored results of suite {suite.name!r} to save "
                            "(run `rbv evaluate` on it first)")
    path = baseline_path(directory, suite.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = table.assign(suite=suite.name, suite_version=suite.version)[BASELINE_COLUMNS]
    out.to_csv(path, index=False, float_format="%.10g")
    return path


def load_baseline(suite: Suite, directory: str | Path) -> pd.DataFrame | None:
    """The suite's baseline rows, or None when there is no file; BaselineError if it is unusable."""
    path = baseline_path(directory, suite.name)
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, dtype={"params": str, "model": str, "defense": str,
                                         "scenario": str, "metric": str})
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise BaselineError(f"{path}: not a baseline CSV ({exc})") from None
    missing = [c for c in BASELINE_COLUMNS if c not in frame.columns]
    if missing:
        raise BaselineError(f"{path}: missing columns {', '.join(missing)}")
    versions = set(frame["suite_version"].dropna().astype(int))
    if versions and versions != {suite.version}:
        raise BaselineError(f"{path}: baseline is for suite version {sorted(versions)}, the suite "
                            f"is version {suite.version}; save a new baseline")
    return frame


@dataclass(frozen=True, kw_only=True)
class GateReport:
    """The outcomes of a suite's gates, and how many of its cells had no result."""

    outcomes: list[GateOutcome]
    missing_cells: int

    @property
    def failed(self) -> list[GateOutcome]:
        """The outcomes that did not pass."""
        return [o for o in self.outcomes if not o.passed]
