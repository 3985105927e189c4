"""Leaderboard aggregates of `layer_order` cells: mean/std/min order accuracy, mean pruned accuracy.

Registered in the AGGREGATES registry on import. Each aggregate is a long-table row of the same
(suite, model, defense, scenario) and metric as its inputs, whose params are the cell's params with
the per-row keys (permutation/draw, order) replaced by {"aggregate": "mean" | "std" | "min"}.
`n` is the number of rows aggregated (permutations or draws); aggregates carry no interval.
std is the population standard deviation over the drawn orders [choice: defined for one draw].
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import pandas as pd

from ...core.cells import canonical_json
from ...core.registry import AGGREGATES
from ...results.table import LONG_COLUMNS

GROUP_COLUMNS = ["suite", "model", "defense", "scenario", "metric"]


@dataclass(frozen=True, kw_only=True)
class OrderAggregate:
    """Which rows of a metric to aggregate, which params to drop, and which statistics to report."""

    metric: str
    drop: tuple[str, ...]
    stats: tuple[str, ...]


ORDER_AGGREGATES = (
    OrderAggregate(metric="order_accuracy", drop=("permutation", "order"),
                   stats=("mean", "std", "min")),
    OrderAggregate(metric="pruned_accuracy", drop=("draw", "order"), stats=("mean",)),
)

STATISTICS: dict[str, Callable[[pd.Series], float]] = {
    "mean": lambda s: float(s.mean()),
    "std": lambda s: float(s.std(ddof=0)),
    "min": lambda s: float(s.min()),
}


def base_params(text: str, drop: tuple[str, ...]) -> str | None:
    """The canonical params without the per-row keys; None for rows that are aggregates already."""
    params = json.loads(text)
    if "aggregate" in params:
        return None
    return canonical_json({k: v for k, v in params.items() if k not in drop})


def aggregate_rows(table: pd.DataFrame, spec: OrderAggregate) -> list[dict[str, object]]:
    """One row per (cell group, statistic) for the rows of `spec.metric`."""
    rows = table[(table["scenario"] == "layer_order") & (table["metric"] == spec.metric)]
    if rows.empty:
        return []
    keys = rows["params"].map(lambda text: base_params(text, spec.drop))
    rows = rows.assign(base=keys).dropna(subset=["base"])
    out: list[dict[str, object]] = []
    for (suite, model, defense, scenario, metric, base), group in rows.groupby(
            [*GROUP_COLUMNS, "base"], sort=False):
        values = group["value"].astype(float)
        for stat in spec.stats:
            params = canonical_json({**json.loads(cast(str, base)), "aggregate": stat})
            out.append({"suite": suite, "model": model, "defense": defense, "scenario": scenario,
                        "params": params, "metric": metric, "value": STATISTICS[stat](values),
                        "n": len(values), "ci_low": math.nan, "ci_high": math.nan})
    return out


def order_aggregates(table: pd.DataFrame) -> pd.DataFrame:
    """Derived rows: mean/std/min order_accuracy per cell and mean pruned_accuracy per k."""
    rows = [row for spec in ORDER_AGGREGATES for row in aggregate_rows(table, spec)]
    if not rows:  # an empty frame of table's dtypes keeps the concatenated columns numeric
        return table[LONG_COLUMNS].iloc[0:0]
    return pd.DataFrame(rows, columns=LONG_COLUMNS)


AGGREGATES.register("order_stats", order_aggregates,
                    description="mean/std/min order accuracy, mean pruned accuracy")
