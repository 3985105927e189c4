"""The `occlusion` scenario's leaderboard aggregate (mean over ratios) and its plot (accuracy vs
drop ratio, one line per model/defense).

The aggregate is a long-table row of the same (suite, model, defense, scenario) and metric whose
params are the cell's without the per-row `ratio` and `mask_grid`, plus {"aggregate": "mean"}: the
mean `occlusion_accuracy` over the cell's ratios (the normalized area under its accuracy-vs-ratio
curve when the ratios are evenly spaced), `n` the number of ratios, no interval. `mask_grid` is
left out so a ViT and a CNN whose masks are identical (token 8x8, pixel 8x8) share one column;
`mask_square` stays.
"""

from __future__ import annotations

import json
import math
from typing import cast

import pandas as pd

from ...core.cells import canonical_json
from ...core.registry import AGGREGATES, PLOTS
from ...report import plots as pk
from ...report.plots import Plot
from ...results.table import LONG_COLUMNS

METRIC = "occlusion_accuracy"
PER_ROW = ("ratio", "mask_grid")


def ratio_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The per-ratio occlusion_accuracy rows (no aggregates)."""
    rows = table[(table["scenario"] == "occlusion") & (table["metric"] == METRIC)]
    return rows[rows["params"].map(lambda text: "ratio" in json.loads(text)).astype(bool)]


def occlusion_means(table: pd.DataFrame) -> pd.DataFrame:
    """Derived rows: mean occlusion_accuracy over the ratios of each cell."""
    rows = ratio_rows(table)
    if rows.empty:  # an empty frame of table's dtypes keeps the concatenated columns numeric
        return table[LONG_COLUMNS].iloc[0:0]
    base = rows["params"].map(lambda text: canonical_json(
        {k: v for k, v in json.loads(text).items() if k not in PER_ROW}))
    out = []
    for (suite, model, defense, scenario, params), group in rows.assign(base=base).groupby(
            ["suite", "model", "defense", "scenario", "base"], sort=False):
        out.append({"suite": suite, "model": model, "defense": defense, "scenario": scenario,
                    "params": canonical_json({**json.loads(cast(str, params)),
                                              "aggregate": "mean"}),
                    "metric": METRIC, "value": float(group["value"].astype(float).mean()),
                    "n": len(group), "ci_low": math.nan, "ci_high": math.nan})
    return pd.DataFrame(out, columns=LONG_COLUMNS)


def occlusion_curves(table: pd.DataFrame) -> list[Plot]:
    """Accuracy vs drop ratio, one line per model/defense, one plot per other setting."""
    rows = table[(table["scenario"] == "occlusion") & (table["metric"] == METRIC)]
    rows = rows[pk.has(rows, lambda p: "ratio" in p and "aggregate" not in p)]
    rows = rows.assign(curve=rows["p"].map(lambda p: pk.without(p, "ratio", *PER_ROW,
                                                                "mask_square")))
    others = [json.loads(c) for c in rows["curve"].unique()]
    plots = []
    for curve, group in rows.groupby("curve", sort=False):
        lines = []
        for subject, own in group.groupby("subject", sort=False):
            first = own["p"].iloc[0]
            points = sorted((pk.point(r, float(r["p"]["ratio"])) for _, r in own.iterrows()),
                            key=lambda p: p["x"])
            line = pk.series(str(subject), own, points)
            mask = f" [{first['mask_grid']} {first['mask_square']}]"
            lines.append({**line, "name": line["name"] + mask, "full": line["full"] + mask})
        shown = pk.varying_text(others, json.loads(cast(str, curve)))
        plots.append({
            "kind": "line", "section": "Occlusion",
            "title": " ".join(x for x in ("accuracy vs drop ratio", shown) if x),
            "subtitle": "random squares set to fill: [token h×w] token patches, [pixel h×w] "
                        f"pixel squares; {pk.CI_NOTE}",
            "x_label": "fraction of squares dropped", "y_label": "accuracy (%)",
            "percent": True, "series": lines})
    return plots


AGGREGATES.register("occlusion_mean", occlusion_means,
                    description="mean occlusion accuracy over the drop ratios of a cell")
PLOTS.register("occlusion_curves", occlusion_curves, order=35)
