"""The `fourier` scenario's plot: the Fourier heat map (error per frequency), one per
model/defense and setting, drawn as a dense grid (`report.svg.grid_chart`)."""

from __future__ import annotations

import json
from typing import cast

import pandas as pd

from ...core.registry import PLOTS
from ...report import plots as pk
from ...report.plots import Plot

FREQ = ("freq_y", "freq_x")


def fourier_heatmaps(table: pd.DataFrame) -> list[Plot]:
    """Error per frequency (centered, DC in the middle), one heat map per model/defense."""
    rows = table[(table["scenario"] == "fourier") & (table["metric"] == "fourier_error")]
    rows = rows[pk.has(rows, lambda p: all(k in p for k in FREQ))]
    if rows.empty:
        return []
    rows = rows.assign(curve=rows["p"].map(lambda p: pk.without(p, *FREQ)),
                       fy=rows["p"].map(lambda p: int(p["freq_y"])),
                       fx=rows["p"].map(lambda p: int(p["freq_x"])))
    others = [json.loads(c) for c in rows["curve"].unique()]
    plots = []
    for (subject, curve), group in rows.groupby(["subject", "curve"], sort=False):
        params = json.loads(cast(str, curve))
        shown = pk.varying_text(others, params)
        eps = params.get("eps")
        heat = pk.heatmap(" ".join(x for x in (str(subject), shown) if x), "Fourier heat map",
                          f"top-1 error (%) under x + r·ε·U(i, j), ε = {eps} (L2 per channel); "
                          "centre: DC; hover a cell for its interval", group, "fy", "fx",
                          ("frequency i (vertical)", "frequency j (horizontal)"))
        plots.append({**heat, "kind": "grid"})
    return plots


PLOTS.register("fourier_heatmaps", fourier_heatmaps, order=36)
