"""Plot data for the HTML leaderboard: per-scenario curves, heatmaps and bars from the long table.

Each builder in `PLOT_BUILDERS` maps the long table to plot dicts (no drawing here; `svg_charts`
draws them). A plot is {"kind": "line" | "heatmap" | "bars", "section", "title", "subtitle", ...};
a point is {"x", "x_text", "y", "low", "high", "n"} with `low`/`high` the whisker (95% Wilson
interval unless the subtitle says otherwise). Add a builder to add a plot type.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import pandas as pd

from . import leaderboard as lb

Plot = dict[str, Any]
Point = dict[str, Any]
HIDDEN_PARAMS = {lb.DEFENSE_PARAMS, lb.FLAG}
SEVERITY_CLEAN = 0
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
        out.append(series(subject, group, points))
    return out


def series(subject: str, rows: pd.DataFrame, points: list[Point]) -> dict[str, Any]:
    """A named series: `name` for legends, `full` (with defense parameters) for tooltips."""
    return {"name": subject, "full": str(rows["full"].iloc[0]), "points": points}


def attack_curves(table: pd.DataFrame) -> list[Plot]:
    """Robust accuracy vs eps, one line per model/defense, for every attack swept over eps."""
    rows = table[table["scenario"].str.startswith("attack:")
                 & (table["metric"] == "robust_accuracy")]
    rows = rows[has(rows, lambda p: isinstance(p.get("eps"), (int, float)))]
    rows = rows.assign(curve=rows["p"].map(lambda p: without(p, "eps")))
    plots = []
    for scenario, in_scenario in rows.groupby("scenario", sort=False):
        others = [json.loads(c) for c in in_scenario["curve"].unique()]
        for curve, group in in_scenario.groupby("curve", sort=False):
            if group["p"].map(lambda p: p["eps"]).nunique() < 2:
                continue
            params = json.loads(curve)
            norm = params.get("norm")
            plots.append({
                "kind": "line", "section": "Adversarial attacks",
                "title": " ".join(x for x in (scenario, varying_text(others, params)) if x),
                "subtitle": f"robust accuracy vs ε; {CI_NOTE}",
                "x_label": f"ε ({norm})" if norm else "ε", "y_label": "robust accuracy (%)",
                "percent": True,
                "series": series_by_subject(group, lambda r: point(r, r["p"]["eps"]))})
    return plots


def corruption_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Per-corruption accuracy rows with a `corruption` and an integer `severity` column."""
    rows = table[table["scenario"].str.startswith("corruption:")
                 & (table["metric"] == "corruption_accuracy")]
    rows = rows[has(rows, lambda p: "severity" in p)]
    return rows.assign(corruption=rows["scenario"].str.split(":", n=1).str[1],
                       severity=rows["p"].map(lambda p: int(p["severity"])))


def corruption_curves(table: pd.DataFrame) -> list[Plot]:
    """Mean accuracy over corruptions vs severity (0 = clean), one line per model/defense."""
    rows = corruption_rows(table)
    clean = table[(table["scenario"] == "corruption") & (table["metric"] == "accuracy")]
    if rows.empty:
        return []
    lines = []
    for subject, group in rows.groupby("subject", sort=False):
        points = [{"x": s, "x_text": str(s), "y": float(g["value"].mean()), "low": None,
                   "high": None, "n": int(g["corruption"].nunique())}
                  for s, g in group.groupby("severity")]
        base = clean[clean["subject"] == subject]
        if not base.empty:
            points.insert(0, {"x": SEVERITY_CLEAN, "x_text": "clean",
                              "y": float(base["value"].mean()), "low": None, "high": None,
                              "n": None})
        lines.append(series(subject, group, points))
    if len({p["x"] for s in lines for p in s["points"]}) < 2:
        return []
    count = rows["corruption"].nunique()
    return [{"kind": "line", "section": "Corruptions", "title": "accuracy vs corruption severity",
             "subtitle": f"mean over {count} corruption{'s' * (count > 1)}; n = corruptions",
             "x_label": "severity", "y_label": "accuracy (%)", "percent": True,
             "series": lines}]


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


def corruption_heatmaps(table: pd.DataFrame) -> list[Plot]:
    """Accuracy per corruption x severity, one heatmap per model/defense; at a single severity,
    one heatmap of model/defense x corruption."""
    rows = corruption_rows(table)
    if rows.empty:
        return []
    if rows["severity"].nunique() == 1:
        severity = rows["severity"].iloc[0]
        return [heatmap(f"accuracy per corruption, severity {severity}", "Corruptions",
                        "accuracy (%); hover a cell for its 95% Wilson interval", rows,
                        "subject", "corruption", ("model / defense", "corruption"))]
    return [heatmap(subject, "Corruptions", "accuracy (%) per corruption and severity", group,
                    "corruption", "severity", ("corruption", "severity"))
            for subject, group in rows.groupby("subject", sort=False)]


def pruning_curves(table: pd.DataFrame) -> list[Plot]:
    """Accuracy vs number of removed encoder blocks (mean over draws), one line per subject."""
    order = table[table["scenario"] == "layer_order"]
    drawn = order[(order["metric"] == "pruned_accuracy")
                  & has(order, lambda p: "draw" in p and "pruned" in p)]
    if drawn.empty:
        return []
    unpruned = order[(order["metric"] == "accuracy")]
    lines = []
    for subject, group in drawn.groupby("subject", sort=False):
        ks = group["p"].map(lambda p: int(p["pruned"]))
        points = [{"x": k, "x_text": str(k), "y": float(g["value"].mean()),
                   "low": float(g["value"].min()), "high": float(g["value"].max()), "n": len(g)}
                  for k, g in group.groupby(ks)]
        base = unpruned[unpruned["subject"] == subject]
        if not base.empty:
            points.insert(0, {**point(base.iloc[-1], 0), "low": None, "high": None})
        lines.append(series(subject, group, points))
    return [{"kind": "line", "section": "Layer order", "title": "accuracy vs pruned layers",
             "subtitle": "mean over random draws of removed blocks; whiskers: min–max over draws",
             "x_label": "encoder blocks removed", "y_label": "accuracy (%)", "percent": True,
             "series": lines}]


def order_bars(table: pd.DataFrame) -> list[Plot]:
    """Accuracy in the trained block order vs in random orders (mean, min–max over orders)."""
    order = table[table["scenario"] == "layer_order"]
    shuffled = order[(order["metric"] == "order_accuracy")
                     & has(order, lambda p: "permutation" in p)]
    if shuffled.empty:
        return []
    unpruned = order[order["metric"] == "accuracy"]
    subjects = list(dict.fromkeys(shuffled["subject"]))
    sequential, random = [], []
    for i, subject in enumerate(subjects):
        base = unpruned[unpruned["subject"] == subject]
        sequential.append(point(base.iloc[-1], i, subject) if not base.empty else None)
        values = shuffled[shuffled["subject"] == subject]["value"].astype(float)
        random.append({"x": i, "x_text": subject, "y": float(values.mean()),
                       "low": float(values.min()), "high": float(values.max()), "n": len(values)})
    return [{"kind": "bars", "section": "Layer order", "title": "accuracy vs block order",
             "subtitle": "trained order (whiskers: 95% Wilson interval) vs random orders "
                         "(mean; whiskers: min–max over permutations)",
             "y_label": "accuracy (%)", "percent": True, "groups": subjects,
             "series": [{"name": "trained order", "full": "trained order", "points": sequential},
                        {"name": "random orders", "full": "random orders", "points": random}]}]


CERTIFY_METRICS = {"certified_accuracy": "certified accuracy",
                   "smoothed_accuracy": "smoothed accuracy"}


def certify_bars(table: pd.DataFrame) -> list[Plot]:
    """Certified vs smoothed accuracy per model/defense (grouped bars), per certify setting."""
    rows = table[(table["scenario"] == "certify") & table["metric"].isin(CERTIFY_METRICS)]
    rows = rows.assign(setting=rows["p"].map(lambda p: without(p)))
    settings = [json.loads(s) for s in rows["setting"].unique()]
    plots = []
    for setting, group in rows.groupby("setting", sort=False):
        subjects = list(dict.fromkeys(group["subject"]))
        bars = []
        for metric, name in CERTIFY_METRICS.items():
            found = {s: r for s, (_, r) in zip(group["subject"], group.iterrows(), strict=True)
                     if r["metric"] == metric}
            bars.append({"name": name, "full": name, "points": [
                point(found[s], i, s) if s in found else None for i, s in enumerate(subjects)]})
        title = " ".join(x for x in ("certify", varying_text(settings, json.loads(setting))) if x)
        patch = json.loads(setting).get("patch_size")
        plots.append({"kind": "bars", "section": "Certification", "title": title,
                      "subtitle": (f"patch {patch}×{patch}; " if patch else "") + CI_NOTE,
                      "y_label": "accuracy (%)", "percent": True, "groups": subjects,
                      "series": bars})
    return plots


def transfer_heatmaps(table: pd.DataFrame) -> list[Plot]:
    """Transfer success rate, source variant x target variant, one heatmap per model/defense."""
    rows = table[(table["metric"] == "transfer_success_rate")
                 & has(table, lambda p: "source" in p and "target" in p)]
    rows = rows.assign(source=rows["p"].map(lambda p: str(p["source"])),
                       target=rows["p"].map(lambda p: str(p["target"])))
    return [heatmap(f"{subject}: {scenario}", "Transfer",
                    "transfer success rate (%), rows: crafted on, columns: evaluated on",
                    group, "source", "target", ("crafted on", "evaluated on"))
            for (subject, scenario), group in rows.groupby(["subject", "scenario"], sort=False)]


PLOT_BUILDERS: list[Callable[[pd.DataFrame], list[Plot]]] = [
    attack_curves, corruption_curves, corruption_heatmaps, pruning_curves, order_bars,
    certify_bars,
    transfer_heatmaps,
]


def build_plots(table: pd.DataFrame) -> list[Plot]:
    """Every plot the table supports, in section order."""
    if table.empty:
        return []
    ready = prepared(table)
    ready = ready[ready["value"].map(lambda v: v is not None and math.isfinite(float(v)))]
    return [plot for builder in PLOT_BUILDERS for plot in builder(ready)]
