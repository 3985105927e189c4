"""Plots of the layer_order scenario: accuracy vs pruned blocks, and trained vs random order."""

from __future__ import annotations

import pandas as pd

from ...core.registry import PLOTS
from ...report import plots as pk
from ...report.plots import Plot


def pruning_curves(table: pd.DataFrame) -> list[Plot]:
    """Accuracy vs number of removed encoder blocks (mean over draws), one line per subject."""
    order = table[table["scenario"] == "layer_order"]
    drawn = order[(order["metric"] == "pruned_accuracy")
                  & pk.has(order, lambda p: "draw" in p and "pruned" in p)]
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
            points.insert(0, {**pk.point(base.iloc[-1], 0), "low": None, "high": None})
        lines.append(pk.series(str(subject), group, points))
    return [{"kind": "line", "section": "Layer order", "title": "accuracy vs pruned layers",
             "subtitle": "mean over random draws of removed blocks; whiskers: min–max over draws",
             "x_label": "encoder blocks removed", "y_label": "accuracy (%)", "percent": True,
             "series": lines}]


def order_bars(table: pd.DataFrame) -> list[Plot]:
    """Accuracy in the trained block order vs in random orders (mean, min–max over orders)."""
    order = table[table["scenario"] == "layer_order"]
    shuffled = order[(order["metric"] == "order_accuracy")
                     & pk.has(order, lambda p: "permutation" in p)]
    if shuffled.empty:
        return []
    unpruned = order[order["metric"] == "accuracy"]
    subjects = list(dict.fromkeys(shuffled["subject"]))
    sequential, random = [], []
    for i, subject in enumerate(subjects):
        base = unpruned[unpruned["subject"] == subject]
        sequential.append(pk.point(base.iloc[-1], i, subject) if not base.empty else None)
        values = shuffled[shuffled["subject"] == subject]["value"].astype(float)
        random.append({"x": i, "x_text": subject, "y": float(values.mean()),
                       "low": float(values.min()), "high": float(values.max()), "n": len(values)})
    return [{"kind": "bars", "section": "Layer order", "title": "accuracy vs block order",
             "subtitle": "trained order (whiskers: 95% Wilson interval) vs random orders "
                         "(mean; whiskers: min–max over permutations)",
             "y_label": "accuracy (%)", "percent": True, "groups": subjects,
             "series": [{"name": "trained order", "full": "trained order", "points": sequential},
                        {"name": "random orders", "full": "random orders", "points": random}]}]


PLOTS.register("pruning_curves", pruning_curves, order=30)
PLOTS.register("order_bars", order_bars, order=31)
