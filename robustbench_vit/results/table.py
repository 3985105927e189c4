"""The leaderboard: a pure function of stored rows — the long table, its pivot, and text formats."""

from __future__ import annotations

import json
import math
from typing import Any, cast

import pandas as pd

from ..core.metrics import require_registered
from ..core.plugins import load_plugins
from ..core.registry import AGGREGATES, ANNOTATIONS, METRICS, SCENARIOS

LONG_COLUMNS = ["suite", "model", "defense", "scenario", "params", "metric", "value", "n",
                "ci_low", "ci_high", "flags", "examples", "weights"]
"""`flags`: JSON list text or None (see `row_flags`); `examples`: encoded per-example outcomes;
`weights`: the evaluated model's weights fingerprint (derived rows take their model's, when all
its rows share one)."""

DEFENSE_PARAMS = "defense_params"
"""The params key that holds a defense's own parameters (see Cell.row_params)."""

def long_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (suite, model, defense, scenario, params, metric): stored values and the
    aggregates every registered AGGREGATES function derives from them (in name order), with the
    flags every ANNOTATIONS function adds.

    A metric no loaded scenario or plugin registered is an error, never a dropped column.
    """
    load_plugins()
    ok = rows[(rows["status"] == "ok") & rows["metric"].notna()]
    table = ok.reindex(columns=LONG_COLUMNS).reset_index(drop=True).astype(
        {"flags": object, "examples": object, "weights": object})
    require_registered(table["metric"].unique())
    derived = [frame for frame in (AGGREGATES.get(name)(table) for name in AGGREGATES.names())
               if not frame.empty]
    if derived:
        table = _with_model_weights(table, pd.concat(derived, ignore_index=True))
    for name in ANNOTATIONS.names():
        added = ANNOTATIONS.get(name)(table)
        for index, flags in added.items():
            merged = sorted({*row_flags(table.at[index, "flags"]), *flags})
            table.at[index, "flags"] = json.dumps(merged) if merged else None
    return table


def _with_model_weights(table: pd.DataFrame, derived: pd.DataFrame) -> pd.DataFrame:
    """`table` and the `derived` rows, which take the weights fingerprint of their (suite, model,
    defense) when all its stored rows share one."""
    derived = derived.assign(weights=derived.get("weights")).astype({"weights": object})
    shared = table.dropna(subset=["weights"]).groupby(["suite", "model", "defense"])["weights"]
    for (suite, model, defense), values in shared:
        if values.nunique() == 1:
            mine = ((derived["suite"] == suite) & (derived["model"] == model)
                    & (derived["defense"] == defense) & derived["weights"].isna())
            derived.loc[mine, "weights"] = values.iloc[0]
    return pd.concat([table, derived], ignore_index=True)


def format_value(value: Any) -> str:
    """Short text for a parameter value: k/255 for eps-like floats, 3 significant digits else."""
    if isinstance(value, float):
        short = f"{value:.3g}"
        k = value * 255  # 3/255 reduces to 1/85: look for a multiple of 1/255, not a fraction
        if math.isfinite(k) and float(short) != value and abs(k - round(k)) < 1e-6:
            return f"{round(k)}/255"
        return short
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def defense_labels(table: pd.DataFrame) -> pd.Series:
    """"name", or "name(k=v,...)" for a defense with parameters: the defense part of a pivot row."""
    labels = []
    for defense, text in zip(table["defense"], table["params"], strict=False):
        params = json.loads(text).get(DEFENSE_PARAMS) or {}
        shown = ",".join(f"{k}={format_value(v)}" for k, v in sorted(params.items()))
        labels.append(f"{defense}({shown})" if shown else defense)
    return pd.Series(labels, index=table.index, dtype=object)


def detail_keys() -> set[str]:
    """Params of per-draw rows (a scenario's `detail_params`, e.g. layer_order's permutation and
    draw): kept in the long table, summarized by aggregates in the headline pivot."""
    return {key for name in SCENARIOS.names()
            for key in getattr(SCENARIOS.get(name), "detail_params", ())}

def row_flags(value: Any) -> list[str]:
    """The flags of a long-table row's `flags` cell (JSON list text, or None / NaN)."""
    if isinstance(value, list):
        return value
    if not isinstance(value, str) or not value:
        return []
    return list(json.loads(value))


def column_labels(table: pd.DataFrame) -> pd.Series:
    """"scenario [varying params] metric" per row: params shown only where they vary in a scenario.

    Defense parameters label rows (see `defense_labels`), never columns.
    """
    params = table["params"].map(
        lambda text: {k: v for k, v in json.loads(text).items() if k != DEFENSE_PARAMS})
    labels = []
    varying: dict[str, list[str]] = {}
    for scenario, group in params.groupby(table["scenario"]):
        keys = sorted({k for p in group for k in p})
        varying[scenario] = [k for k in keys if len({repr(p.get(k)) for p in group}) > 1]
    for scenario, p, metric in zip(table["scenario"], params, table["metric"], strict=False):
        shown = " ".join(f"{k}={format_value(p[k])}" for k in varying[scenario]
                         if p.get(k) is not None)
        labels.append(" ".join(x for x in (scenario, shown, metric) if x))
    return pd.Series(labels, index=table.index)


def labelled(table: pd.DataFrame, headline_only: bool = True) -> pd.DataFrame:
    """The rows a pivot shows, with `column` ("scenario [params] metric") and `defense` labels."""
    if headline_only:
        headline = {m for m in METRICS.names() if METRICS.get(m).headline}
        details = detail_keys()
        detail = table["params"].map(lambda text: bool(details & set(json.loads(text))))
        table = table[table["metric"].isin(headline) & ~detail]
    table = table.assign(column=column_labels(table), defense=defense_labels(table))
    return table.iloc[_column_order(table)]


def _column_order(table: pd.DataFrame) -> list[int]:
    """Row positions so columns come scenario by scenario (first appearance), sweep values in
    increasing order within a scenario — whatever order the cells finished in (e.g. on Ray)."""
    first = {s: i for i, s in reversed(list(enumerate(table["scenario"])))}

    def key(i: int) -> tuple[Any, ...]:
        params = json.loads(cast(str, table["params"].iat[i]))
        values = tuple(_sortable(params[k]) for k in sorted(params)
                       if k != DEFENSE_PARAMS)
        return first[table["scenario"].iat[i]], values, i

    return sorted(range(len(table)), key=key)


def _sortable(value: Any) -> tuple[int, Any]:
    if isinstance(value, bool) or value is None:
        return (1, str(value))
    if isinstance(value, (int, float)):
        return (0, value)
    return (1, json.dumps(value, sort_keys=True))


def pivot(table: pd.DataFrame, headline_only: bool = True) -> pd.DataFrame:
    """Rows model/defense, columns "scenario [params] metric", values; suite order preserved."""
    if table.empty:
        return pd.DataFrame()
    table = labelled(table, headline_only)
    wide = table.pivot_table(index=["model", "defense"], columns="column", values="value",
                             aggfunc="last", sort=False)
    wide.columns.name = None
    return wide


def flag_notes(table: pd.DataFrame) -> list[str]:
    """"model/defense: column: flags" for every flagged number the pivot shows (the text formats
    print them under the table)."""
    if table.empty:
        return []
    shown = labelled(table)
    notes: dict[str, None] = {}
    for model, defense, column, flags in zip(shown["model"], shown["defense"], shown["column"],
                                             shown["flags"], strict=True):
        if row_flags(flags):
            notes[f"{model}/{defense}: {column}: {', '.join(row_flags(flags))}"] = None
    return list(notes)


def format_cell(column: str, value: Any) -> str:
    """A pivot value as text: proportions in percent (1 decimal), other metrics with 3 decimals."""
    if value is None or pd.isna(value):
        return ""
    metric = column.rsplit(" ", 1)[-1]
    if metric in METRICS and METRICS.get(metric).proportion:
        return f"{100 * value:.1f}"
    return f"{value:.3f}"


def to_text(wide: pd.DataFrame, fmt: str) -> str:
    """csv, markdown or plain text of the pivot (proportions in percent except in csv)."""
    if fmt == "csv":
        return wide.to_csv(float_format="%.6g")
    header = ["model", "defense", *wide.columns]
    body = [[str(m), str(d),
             *(format_cell(c, v) for c, v in zip(wide.columns, values, strict=False))]
            for (m, d), values in zip(wide.index, wide.to_numpy(), strict=False)]
    if fmt == "markdown":
        esc = [[cell.replace("|", "\\|") for cell in row] for row in [header, *body]]
        lines = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in esc[1:]])
    # terminal table: one line per scenario/metric column, one column per model/defense
    rows = [["", *(f"{m}/{d}" for m, d in wide.index)]]
    rows += [[col, *(format_cell(col, v) for v in wide[col])] for col in wide.columns]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths, strict=False))).rstrip()
                     for r in rows)


def to_json(table: pd.DataFrame) -> str:
    """The long table as a JSON list of objects (params decoded)."""
    records = []
    for row in table.drop(columns=["examples"], errors="ignore").to_dict(orient="records"):
        row["params"] = (json.loads(row["params"]) if isinstance(row["params"], str)
                         else row["params"])
        row["flags"] = row_flags(row.get("flags"))
        records.append({k: (None if isinstance(v, float) and pd.isna(v) else v)
                        for k, v in row.items()})
    return json.dumps(records, indent=2, default=_json_default)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if value is pd.NA:
        return None
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
