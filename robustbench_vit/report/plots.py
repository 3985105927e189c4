"""Plot data for the HTML leaderboard: per-scenario curves, heatmaps and bars from the long table.

Plot builders live with their scenarios and register in the PLOTS registry (meta `order` sets the
section order); each maps the prepared long table to plot dicts (no drawing here; `report.svg`
draws them). The helpers below are public (re-exported by `robustbench_vit.api`) so a third-party
scenario builds its plots the same way.

A plot is {"kind": "line" | "heatmap" | "grid" | "bars", "section", "title", "subtitle", ...}
("grid": a `heatmap` dict drawn as a dense grid of unlabelled cells, for many rows and columns); a
point is {"x", "x_text", "y", "low", "high", "n"} with `low`/`high` the whisker (95% Wilson
interval unless the subtitle says otherwise).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pandas as pd

from ..core.registry import PLOTS
from ..results import table as lb

Plot = dict[str, Any]
Point = dict[str, Any]
HIDDEN_PARAMS = {lb.DEFENSE_PARAMS}
CI_NOTE = "whiskers: 95% Wilson interval"


def subject_label(model: str, defense: str) -> str:
    """How a model/defense pair is named in legends: "model / defense"."""
    return f"{model} / {defense}"


def prepared(table: pd.DataFrame) -> pd.DataFrame:
    """The long table with `p` (params without the defense's), `full` ("model / defense(params)")
    and `subject`: "model / defense" where that names one full label, else the full label."""
    params = table["params"].map(
        lambda text: {k: v for k, v in json.loads(text).items() if k not in HIDDEN_PARAMS})
    labels = lb.defense_labels(table)
    full = [subject_label(m, d) for m, d in zip(table["model"], labels, strict=True)]
    short = [subject_label(m, d) for m, d in zip(table["model"], table["defense"], strict=True)]
    owners: dict[str, set[str]] = {}
    for s, f in zip(short, full, strict=True):
        owners.setdefault(s, set()).add(f)
    subjects = [s if len(owners[s]) == 1 else f for s, f in zip(short, full, strict=True)]
    return table.assign(p=params, full=pd.Series(full, index=table.index, dtype=object),
                        subject=pd.Series(subjects, index=table.index, dtype=object))


def has(rows: pd.DataFrame, test: Callable[[dict[str, Any]], bool]) -> pd.Series:
    """A boolean mask of the rows whose params pass `test` (boolean even when empty)."""
    return rows["p"].map(test).astype(bool)


def number(value: Any) -> float | None:
    """A float, or None for missing values."""
    return None if value is None or pd.isna(value) else float(value)


def point(row: pd.Series, x: Any, x_text: str | None = None) -> Point:
    """A plotted point from a long-table row, with its interval and sample size."""
    n = row["n"]
    return {"x": x, "x_text": x_text if x_text is not None else lb.format_value(x),
            "y": float(row["value"]), "low": number(row["ci_low"]), "high": number(row["ci_high"]),
            "n": None if pd.isna(n) else int(n)}


def without(params: dict[str, Any], *keys: str) -> str:
    """Canonical JSON of params minus `keys`: the identity of a curve's other settings."""
    return json.dumps({k: v for k, v in params.items() if k not in keys}, sort_keys=True)


def varying_text(groups: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """"k=v ..." for the keys whose values differ between `groups` (shown in titles)."""
    keys = sorted({k for g in groups for k in g})
    varying = [k for k in keys if len({repr(g.get(k)) for g in groups}) > 1]
    return " ".join(f"{k}={lb.format_value(params[k])}" for k in varying if k in params)


def series_by_subject(rows: pd.DataFrame, to_point: Callable[[pd.Series], Point]) -> list[dict]:
    """One series per subject (suite order), its points sorted by x."""
    out = []
    for subject, group in rows.groupby("subject", sort=False):
        points = sorted((to_point(row) for _, row in group.iterrows()), key=lambda p: p["x"])
        out.append(series(str(subject), group, points))
    return out


def series(subject: str, rows: pd.DataFrame, points: list[Point]) -> dict[str, Any]:
    """A named series: `name` for legends, `full` (with defense parameters) for tooltips."""
    return {"name": subject, "full": str(rows["full"].iloc[0]), "points": points}


def heatmap(title: str, section: str, subtitle: str, rows: pd.DataFrame, y: str, x: str,
            labels: tuple[str, str]) -> Plot:
    """A heatmap plot of `rows` (one value per (y, x); the last one wins)."""
    ys, xs = ordered(rows[y]), ordered(rows[x])
    cells: list[list[Point | None]] = [[None] * len(xs) for _ in ys]
    for _, row in rows.iterrows():
        cells[ys.index(row[y])][xs.index(row[x])] = point(row, row[x], str(row[x]))
    return {"kind": "heatmap", "section": section, "title": title, "subtitle": subtitle,
            "x_label": labels[1], "y_label": labels[0], "percent": True,
            "x": [str(v) for v in xs], "y": [str(v) for v in ys], "cells": cells}


def ordered(values: pd.Series) -> list[Any]:
    """Distinct values: sorted when all are numbers, else in order of first appearance."""
    distinct = list(dict.fromkeys(values))
    numeric = all(isinstance(v, (int, float)) for v in distinct)
    return sorted(distinct) if numeric else distinct


def build_plots(table: pd.DataFrame) -> list[Plot]:
    """Every plot the table supports, in section order."""
    if table.empty:
        return []
    ready = prepared(table)
    ready = ready[ready["value"].map(lambda v: v is not None and math.isfinite(float(v)))]
    builders = sorted(PLOTS.names(), key=lambda name: (PLOTS.meta(name).get("order", 100), name))
    return [plot for name in builders for plot in PLOTS.get(name)(ready)]
