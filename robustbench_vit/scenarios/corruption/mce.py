"""mCE and relative mCE (Hendrycks & Dietterich 2019), derived from stored corruption rows.

For a model (with a defense) and its baseline, over the (corruption, severity) points both have:

    CE_c     = sum_s err(c, s) / sum_s err_base(c, s)
    relCE_c  = sum_s (err(c, s) - err_clean) / sum_s (err_base(c, s) - err_base_clean)
    mCE      = 100 * mean of CE_c over the 15 benchmark corruptions (relative mCE likewise)

err = 1 - corruption_accuracy (rows `corruption:<name>`); err_clean = 1 - the clean `accuracy` row
of the same corruption cell. The baseline is the suite model named in the rows' `baseline` param
(its `defense: none` rows), or a published table (`published:alexnet`,
robustbench_vit.data.published).

Missing points [choice]: the standard number needs all 15 benchmark corruptions at all 5
severities. When some are missing (or a baseline sum is 0 — relative: <= 0 — so a CE is undefined)
the mean is still reported over the corruptions that have points, and the row's params carry
`partial: "<k>/15 corruptions, severities <...>"`, so it never sits in the standard column.
Rows: scenario `corruption`, metric `mce` / `relative_mce`, params {"baseline": ...}.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ...core.cells import canonical_json
from ...core.registry import AGGREGATES
from ...data.corruptions import BENCHMARK, SEVERITIES
from ...data.published import is_published, published_table
from ...results.table import DEFENSE_PARAMS, LONG_COLUMNS

log = logging.getLogger(__name__)

KIND = "corruption"
BASELINE_DEFENSE = "none"


@dataclass(kw_only=True)
class Errors:
    """Error rates of one model/defense: per (corruption, severity), clean per severity."""

    corrupted: dict[tuple[str, int], float] = field(default_factory=dict)
    clean: dict[int, float] = field(default_factory=dict)
    n: dict[tuple[str, int], int] = field(default_factory=dict)
    baselines: set[str] = field(default_factory=set)

    def clean_error(self, severity: int) -> float | None:
        """The clean error measured beside `severity` (else any measured one)."""
        if severity in self.clean:
            return self.clean[severity]
        return next(iter(self.clean.values()), None)


Subject = tuple[str, str, str, str]  # suite, model, defense, defense params (canonical JSON)


def collect_errors(table: pd.DataFrame) -> dict[Subject, Errors]:
    """Errors of every (suite, model, defense) from the corruption rows of the long table."""
    out: dict[Subject, Errors] = defaultdict(Errors)
    rows = table[table["scenario"].astype(str).str.startswith(KIND)]
    for suite, model, defense, scenario, text, metric, value, n in zip(
            rows["suite"], rows["model"], rows["defense"], rows["scenario"], rows["params"],
            rows["metric"], rows["value"], rows["n"], strict=True):
        params = json.loads(text) if isinstance(text, str) else dict(text or {})
        severity = params.get("severity")
        if severity is None or pd.isna(value):
            continue
        entry = out[(suite, model, defense, canonical_json(params.get(DEFENSE_PARAMS) or {}))]
        if params.get("baseline"):
            entry.baselines.add(str(params["baseline"]))
        if scenario == KIND and metric == "accuracy":
            entry.clean[int(severity)] = 1 - float(value)
        elif scenario.startswith(f"{KIND}:") and metric == "corruption_accuracy":
            point = (scenario.split(":", 1)[1], int(severity))
            entry.corrupted[point] = 1 - float(value)
            entry.n[point] = int(n) if n is not None and not pd.isna(n) else 0
    return dict(out)


def baseline_errors(name: str, suite: str, found: dict[Subject, Errors]) -> Errors | None:
    """The baseline's errors: a published table, or the suite model's undefended rows."""
    if is_published(name):
        table = published_table(name)
        clean = {s: table.clean for s in SEVERITIES} if table.clean is not None else {}
        return Errors(corrupted=dict(table.errors), clean=clean)
    return found.get((suite, name, BASELINE_DEFENSE, canonical_json({})))


Point = tuple[str, int]  # corruption, severity


def _offset(errors: Errors, severity: int, relative: bool) -> float:
    """What a point's error is counted from: the clean error (relative CE; the points are those
    that have one), else 0."""
    clean = errors.clean_error(severity) if relative else None
    return clean if clean is not None else 0


def corruption_errors(model: Errors, base: Errors,
                      relative: bool) -> dict[str, tuple[float, list[Point]]]:
    """CE_c (or relative CE_c) per benchmark corruption over the points both have."""
    out = {}
    for corruption in BENCHMARK:
        points = [(corruption, s) for s in SEVERITIES
                  if (corruption, s) in model.corrupted and (corruption, s) in base.corrupted]
        if relative:
            points = [p for p in points if model.clean_error(p[1]) is not None
                      and base.clean_error(p[1]) is not None]
        if not points:
            continue
        num = sum(model.corrupted[p] - _offset(model, p[1], relative) for p in points)
        den = sum(base.corrupted[p] - _offset(base, p[1], relative) for p in points)
        if den <= 0:
            log.info("%s: baseline %serror sum %.4g: CE undefined, left out", corruption,
                     "relative " if relative else "", den)
            continue
        out[corruption] = (num / den, points)
    return out


def coverage(points: list[Point]) -> str | None:
    """None for the full 15 x 5 grid, else "<k>/15 corruptions, severities <...>"."""
    corruptions = {c for c, _ in points}
    severities = sorted({s for _, s in points})
    if len(points) == len(BENCHMARK) * len(SEVERITIES):
        return None
    return (f"{len(corruptions)}/{len(BENCHMARK)} corruptions, severities "
            f"{','.join(map(str, severities))}")


def mce_rows(table: pd.DataFrame) -> pd.DataFrame:
    """mce and relative_mce rows for every model/defense whose corruption rows name a baseline."""
    found = collect_errors(table)
    rows: list[dict[str, Any]] = []
    for (suite, model, defense, defense_params), errors in found.items():
        for baseline in sorted(errors.baselines):
            base = baseline_errors(baseline, suite, found)
            if base is None:
                log.warning("%s: baseline %r has no undefended corruption rows: no mCE for %s",
                            suite, baseline, model)
                continue
            for metric, relative in (("mce", False), ("relative_mce", True)):
                row = aggregate_row(errors, base, relative)
                if row is None:
                    continue
                value, n, partial = row
                params: dict[str, Any] = {"baseline": baseline}
                if partial:
                    params["partial"] = partial
                if defense_params != "{}":
                    params[DEFENSE_PARAMS] = json.loads(defense_params)
                rows.append({"suite": suite, "model": model, "defense": defense,
                             "scenario": KIND, "params": canonical_json(params), "metric": metric,
                             "value": value, "n": n, "ci_low": None, "ci_high": None})
    return pd.DataFrame(rows, columns=LONG_COLUMNS)


def aggregate_row(model: Errors, base: Errors,
                  relative: bool) -> tuple[float, int, str | None] | None:
    """(100 x mean CE, images per point, partial note) or None when no corruption has a CE."""
    ces = corruption_errors(model, base, relative)
    if not ces:
        return None
    points = [p for _, used in ces.values() for p in used]
    value = 100 * sum(ce for ce, _ in ces.values()) / len(ces)
    n = min((model.n.get(p, 0) for p in points), default=0)
    return value, n, coverage(points)


AGGREGATES.register("mce", mce_rows, description="mCE and relative mCE over corruptions")
