"""Plots of the corruption scenario: mean accuracy vs severity, and accuracy heatmaps."""

from __future__ import annotations

import pandas as pd

from ...core.registry import PLOTS
from ...report import plots as pk
from ...report.plots import Plot

SEVERITY_CLEAN = 0
"""The x position of clean accuracy on severity curves."""


def corruption_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Per-corruption accuracy rows with a `corruption` and an integer `severity` column."""
    rows = table[table["scenario"].str.startswith("corruption:")
                 & (table["metric"] == "corruption_accuracy")]
    rows = rows[pk.has(rows, lambda p: "severity" in p)]
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
        lines.append(pk.series(str(subject), group, points))
    if len({p["x"] for s in lines for p in s["points"]}) < 2:
        return []
    count = rows["corruption"].nunique()
    return [{"kind": "line", "section": "Corruptions", "title": "accuracy vs corruption severity",
             "subtitle": f"mean over {count} corruption{'s' * (count > 1)}; n = corruptions",
             "x_label": "severity", "y_label": "accuracy (%)", "percent": True,
             "series": lines}]


def corruption_heatmaps(table: pd.DataFrame) -> list[Plot]:
    """Accuracy per corruption x severity, one heatmap per model/defense; at a single severity,
    one heatmap of model/defense x corruption."""
    rows = corruption_rows(table)
    if rows.empty:
        return []
    if rows["severity"].nunique() == 1:
        severity = rows["severity"].iloc[0]
        return [pk.heatmap(f"accuracy per corruption, severity {severity}", "Corruptions",
                        "accuracy (%); hover a cell for its 95% Wilson interval", rows,
                        "subject", "corruption", ("model / defense", "corruption"))]
    return [pk.heatmap(str(subject), "Corruptions", "accuracy (%) per corruption and severity",
                       group, "corruption", "severity", ("corruption", "severity"))
            for subject, group in rows.groupby("subject", sort=False)]


PLOTS.register("corruption_curves", corruption_curves, order=20)
PLOTS.register("corruption_heatmaps", corruption_heatmaps, order=21)
