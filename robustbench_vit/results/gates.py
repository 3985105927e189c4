"""Gates: turn stored results into pass/fail checks (threshold and baseline), for `rbv gate` and
pytest.

A gate selects rows of the suite's long table (stored rows and derived aggregates of the suite's
current cells) by shell-style patterns on model, defense and scenario, a metric, and a subset of the
parameters. Each matching row is one check:

- threshold: `min <= value <= max`;
- no_flags: the row carries no flag (no attack-failure indicator fired on it);
- better_than / exceeds: the row is compared with another row of the same scenario and metric
  (another model, defense and/or params). `better_than` asks for a gain in the metric's good
  direction, `exceeds` for a larger value whatever the direction (a paper's claim such as "DTA
  succeeds more often than random noise"); either way the lower end of the interval of the
  difference must lie above the margin `by` (default 0). The interval is paired (McNemar, from
  the per-example outcomes) when both rows carry outcomes on the same images — sharper than two
  independent proportions — else the Agresti-Caffo interval of two independent proportions, else
  (neither a proportion nor stored intervals) the point values, and the message says which;
- baseline: the value may not be worse than the same row of `results/baselines/<suite>.csv` by more
  than a statistical margin plus `tolerance`. For proportions with a sample size the margin is
  z * SE of the difference of two independent proportions (Agresti-Caffo: (x+1)/(n+2), so p = 0 or 1
  still has a width), z from the suite's `confidence`; for other metrics it combines the half-widths
  of the stored confidence intervals when there are any, else it is zero. Only a change in the
  metric's bad direction fails a baseline gate. A baseline row records the weights fingerprint of
  the model that produced it; when the current row's differs, the check fails saying so ("baseline
  made with different weights") and compares nothing: another CPU's retrained checkpoint is not a
  regression, and the zoo ships the reference checkpoints its baselines were made with.

A gate that matches no row fails: a missing result must not pass silently. A gate with `expect:
fail` states a claim known not to hold here: its failing checks are expected failures (with the
gate's measured `reason`), its passing ones unexpected passes; neither fails the run, but a gate
that matches no row still does.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from statistics import NormalDist
from typing import Any, cast

import pandas as pd

from ..config.spec import CompareSpec, GateSpec
from ..config.suite import Suite
from ..core.cache import atomic_path
from ..core.errors import BaselineError
from ..core.metrics import paired_difference
from ..core.outcomes import ExampleBits
from ..core.params import parse_fraction
from ..core.plugins import load_plugins
from ..core.registry import METRICS
from .baseline_csv import read_baseline_csv
from .table import DEFENSE_PARAMS, defense_labels, format_value, long_table, row_flags

BASELINE_COLUMNS = ["suite", "suite_version", "model", "defense", "scenario", "params", "metric",
                    "value", "n", "ci_low", "ci_high", "weights"]
OPTIONAL_BASELINE_COLUMNS = {"weights"}
"""Absent from baselines written before weights were fingerprinted: their rows are compared
without the fingerprint check."""
ROW_KEY = ["model", "defense", "scenario", "params", "metric"]


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
    expected_failure: str | None = None
    """The gate's reason when it has `expect: fail` (set on every row it checked)."""
    reference: float | None = None
    """The compared row's value (better_than / exceeds gates)."""
    interval: tuple[float, float] | None = None
    """The interval behind the verdict: of the difference for a comparison, else the row's own
    stored interval (when it has one)."""

    @property
    def verdict(self) -> str:
        """PASSED, FAILED, XFAIL (an expected failure) or XPASS (an expected failure that
        passed)."""
        if self.expected_failure is None:
            return "PASSED" if self.passed else "FAILED"
        return "XPASS" if self.passed else "XFAIL"

    @property
    def counts_as_failure(self) -> bool:
        """Whether this outcome fails the run (an expected failure does not)."""
        return not self.passed and self.expected_failure is None


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
    if isinstance(wanted, str) and isinstance(actual, str):
        return fnmatch.fnmatchcase(actual, wanted)  # shell patterns, as for model and scenario
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
            compare = partial(_compare, gate, row, label, table, z)
            outcome = _check_row(index, gate, row, row_id(row, label, shown), base, z, compare)
            if gate.expect == "fail":
                outcome = replace(outcome, expected_failure=gate.reason)
            outcomes.append(outcome)
    return _unique_ids(outcomes)


def _checks(gate: GateSpec) -> str:
    kinds = (("min", gate.min is not None), ("max", gate.max is not None),
             ("baseline", gate.baseline), ("no_flags", gate.no_flags),
             ("better_than", gate.better_than is not None),
             ("exceeds", gate.exceeds is not None))
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
    return [o if counts[o.id] == 1 else replace(o, id=f"{o.id}@{o.checks}") for o in outcomes]


def _check_row(index: int, gate: GateSpec, row: pd.Series, ident: str,
               base: dict[tuple[str, ...], pd.Series] | None, z: float,
               compare: Callable[[str], Comparison]) -> GateOutcome:
    value = float(row["value"])
    half = _half_width(row)
    interval = (float(row["ci_low"]), float(row["ci_high"])) if half is not None else None
    reference = None
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
    for side in ("better_than", "exceeds"):
        if getattr(gate, side) is not None:
            comparison = compare(side)
            checks.append((comparison.passed, comparison.text))
            if comparison.reference is not None:
                reference, interval = comparison.reference, comparison.interval
    failed = [text for ok, text in checks if not ok]
    return GateOutcome(gate=index, id=ident, checks=_checks(gate), passed=not failed, value=value,
                       message="; ".join(failed or [text for _, text in checks]),
                       reference=reference, interval=interval)


@dataclass(frozen=True)
class Comparison:
    """The verdict of a better_than / exceeds check, with the numbers behind it."""

    passed: bool
    text: str
    reference: float | None = None
    interval: tuple[float, float] | None = None


def _compare(gate: GateSpec, row: pd.Series, label: str, table: pd.DataFrame, z: float,
             side: str) -> Comparison:
    """`better_than` / `exceeds` (named by `side`): whether `row` beats the compared row by more
    than the margin, judged by the lower end of the interval of the difference."""
    spec: CompareSpec = getattr(gate, side)
    other, problem = _compared_row(spec, row, label, table)
    if other is None:
        return Comparison(False, f"{side}: {problem}")
    gain, low, high, how = _difference(row, other, z)
    if side == "better_than" and not METRICS.get(str(row["metric"])).higher_is_better:
        gain, low, high = -gain, -high, -low
    margin = float(spec.by)
    who = f"{spec.model or row['model']}/{spec.defense or label}"
    changed = ",".join(f"{k}={format_value(v)}" for k, v in sorted(spec.params.items()))
    text = (f"{side}: {float(row['value']):.4f} vs {float(other['value']):.4f} for "
            f"{who}{f'[{changed}]' if changed else ''} ({how}; interval of the "
            f"{'gain' if side == 'better_than' else 'difference'} [{low:.4f}, {high:.4f}]"
            f"{f', margin {margin:.4f}' if margin else ''})")
    return Comparison(low > margin, text, float(other["value"]), (low, high))


def _compared_row(spec: CompareSpec, row: pd.Series, label: str,
                  table: pd.DataFrame) -> tuple[pd.Series | None, str]:
    """The one row a comparison names, or (None, why not)."""
    model = spec.model or str(row["model"])
    defense = spec.defense or label
    wanted = _comparable({**_own_params(row["params"]), **spec.params})
    candidates = table[(table["model"] == model) & (table["scenario"] == row["scenario"])
                       & (table["metric"] == row["metric"])]
    labels = defense_labels(candidates)
    others = [r for (_, r), lab in zip(candidates.iterrows(), labels, strict=True)
              if defense in (lab, str(r["defense"]))
              and _same_params(wanted, _comparable(_own_params(r["params"])))]
    if len(others) != 1:
        return None, (f"{len(others)} rows of {model}/{defense} match this row's scenario, params "
                      "and metric with the comparison's changes (need exactly one)")
    return others[0], ""


def _own_params(params: str) -> dict[str, Any]:
    return {k: v for k, v in json.loads(params).items() if k != DEFENSE_PARAMS}


def _comparable(params: dict[str, Any]) -> dict[str, Any]:
    """Params without null values: a key set to null in a comparison must be absent or null."""
    return {k: v for k, v in params.items() if v is not None}


def _same_params(wanted: dict[str, Any], actual: dict[str, Any]) -> bool:
    return wanted.keys() == actual.keys() and _params_match(wanted, actual)


def _difference(row: pd.Series, other: pd.Series, z: float) -> tuple[float, float, float, str]:
    """(value - other value, interval low, high, how the interval was made)."""
    value, reference = float(row["value"]), float(other["value"])
    paired = _paired_bits(row, other)
    if paired is not None:
        mine, theirs = paired
        _, low, high = paired_difference(int((mine & ~theirs).sum()), int((theirs & ~mine).sum()),
                                         len(mine), z)
        return value - reference, low, high, f"paired, the same {len(mine)} images"
    metric = METRICS.get(str(row["metric"]))
    n, m = _count(row["n"]), _count(other["n"])
    # a derived statistic (a mean over permutations, ...) counts draws, not images, in its n
    derived = any("aggregate" in json.loads(str(r["params"])) for r in (row, other))
    if metric.proportion and n and m and not derived:
        p1, p2 = (value * n + 1) / (n + 2), (reference * m + 1) / (m + 2)
        half = z * math.sqrt(_adjusted_var(value, n) + _adjusted_var(reference, m))
        return value - reference, p1 - p2 - half, p1 - p2 + half, (
            f"independent samples of {n} and {m}: no per-example outcomes to pair")
    halves = [_half_width(r) for r in (row, other)]
    if all(h is not None for h in halves):
        half = math.sqrt(sum(h * h for h in halves if h is not None))
        diff = value - reference
        return diff, diff - half, diff + half, "the stored intervals"
    diff = value - reference
    return diff, diff, diff, "point values: no intervals stored"


def _paired_bits(row: pd.Series, other: pd.Series) -> tuple[Any, Any] | None:
    """Both rows' per-example outcomes when they are on the same images, else None."""
    if not isinstance(row.get("examples"), str) or not isinstance(other.get("examples"), str):
        return None
    mine, theirs = (ExampleBits.decode(r["examples"]) for r in (row, other))
    if mine.data != theirs.data or len(mine.bits) != len(theirs.bits) or not len(mine.bits):
        return None
    return mine.bits, theirs.bits


def _against_baseline(gate: GateSpec, row: pd.Series,
                      base: dict[tuple[str, ...], pd.Series] | None, z: float) -> tuple[bool, str]:
    if base is None:
        return False, "no baseline file (write one with `rbv baseline save SUITE`)"
    old = base.get(tuple(str(row[c]) for c in ROW_KEY))
    if old is None:
        return False, "no baseline value for this row (save the baseline again after adding it)"
    made_with, now = _weights(old), _weights(row)
    if made_with and now and made_with != now:
        return False, (f"baseline made with different weights (baseline {made_with}, now {now}): "
                       "re-baseline (`rbv baseline save`) or pin the checkpoint it was made with; "
                       "the values are not compared")
    value, reference = float(row["value"]), float(old["value"])
    margin = baseline_margin(row, old, z) + float(gate.tolerance)
    higher_is_better = METRICS.get(row["metric"]).higher_is_better
    worse_by = (reference - value) if higher_is_better else (value - reference)
    text = f"{value:.4f} vs baseline {reference:.4f} (allowed change {margin:.4f})"
    return worse_by <= margin + 1e-12, text


def _weights(row: pd.Series) -> str | None:
    value = row.get("weights")
    return None if value is None or pd.isna(value) or not str(value).strip() else str(value)


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
    out = table.assign(suite=suite.name, suite_version=suite.version).reindex(
        columns=BASELINE_COLUMNS)
    with atomic_path(path) as tmp:  # a failed write leaves the previous baseline as it was
        out.to_csv(tmp, index=False, float_format="%.10g")
    return path


def load_baseline(suite: Suite, directory: str | Path) -> pd.DataFrame | None:
    """The suite's baseline rows, or None when there is no file; BaselineError if it is unusable."""
    path = baseline_path(directory, suite.name)
    if not path.is_file():
        return None
    required = [c for c in BASELINE_COLUMNS if c not in OPTIONAL_BASELINE_COLUMNS]
    frame = read_baseline_csv(path, required=required, key=ROW_KEY)
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
        """The outcomes that fail the run (not passed, not expected to fail)."""
        return [o for o in self.outcomes if o.counts_as_failure]
