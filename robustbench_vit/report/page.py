"""The HTML leaderboard's page model: plain, JSON-ready data gathered from stored rows.

`build_page(rows, suite)` is a pure function of the store's rows (one suite). It knows nothing about
HTML: `html_report` renders the dict it returns, and embeds it as JSON for machine readers.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pandas as pd

from ..core.registry import FLAGS, METRICS
from ..results import table as lb
from .plots import build_plots, subject_label

STATUSES = ("ok", "skipped", "error")
MAX_DETAIL = 4000
"""Characters of an error's traceback kept (its end: where it was raised)."""


def build_page(rows: pd.DataFrame, suite: str) -> dict[str, Any]:
    """The whole page as a dict: provenance, leaderboard table, plots, flags and problem cells."""
    table = lb.long_table(rows)
    return {
        "suite": suite,
        "provenance": provenance(rows, suite),
        "leaderboard": leaderboard_table(table),
        "plots": build_plots(table),
        "flags": flags(table),
        "problems": problems(rows),
    }


def distinct(series: pd.Series) -> list[Any]:
    """Sorted distinct non-null values as plain Python objects."""
    values = {v.item() if hasattr(v, "item") else v for v in series.dropna()}
    return sorted(values, key=str)


def provenance(rows: pd.DataFrame, suite: str) -> dict[str, Any]:
    """Where the numbers come from: suite version, seed, library versions, devices, dates."""
    counts = rows.drop_duplicates("cell_key")["status"].value_counts()
    created = distinct(rows["created_at"])
    return {
        "suite": suite,
        "suite_version": distinct(rows["suite_version"]),
        "seed": distinct(rows["seed"]),
        "runs": len(distinct(rows["run_id"])),
        "first_result": created[0] if created else None,
        "last_result": created[-1] if created else None,
        "versions": {
            "robustbench_vit": distinct(rows["rbv_version"]),
            "torch": distinct(rows["torch_version"]),
            "timm": distinct(rows["timm_version"]) if "timm_version" in rows else [],
        },
        "devices": distinct(rows["device"]),
        "cells": {status: int(counts.get(status, 0)) for status in STATUSES},
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def column_info(label: str, scenario: str, metric: str) -> dict[str, Any]:
    """A leaderboard column: its label parts and its metric's direction and description."""
    info = METRICS.get(metric) if metric in METRICS else None
    params = label[len(scenario):len(label) - len(metric)].strip()
    return {"label": label, "scenario": scenario, "group": scenario.split(":")[0],
            "params": params, "metric": metric,
            "higher_is_better": info.higher_is_better if info else True,
            "proportion": info.proportion if info else False,
            "description": info.description if info else metric}


def cell_info(column: str, row: pd.Series | None) -> dict[str, Any]:
    """One table cell: value, display text, 95% interval, sample size and flag (or empties)."""
    if row is None or pd.isna(row["value"]):
        return {"value": None, "text": "", "ci": None, "n": None, "flags": [], "best": False}
    low, high = row["ci_low"], row["ci_high"]
    has_ci = not (pd.isna(low) or pd.isna(high))
    return {"value": float(row["value"]), "text": lb.format_cell(column, row["value"]),
            "ci": [float(low), float(high)] if has_ci else None,
            "n": None if pd.isna(row["n"]) else int(row["n"]),
            "flags": flag_entries(lb.row_flags(row["flags"])), "best": False}


def flag_entries(names: list[str]) -> list[dict[str, str]]:
    """[{"name", "text"}] for flag names, the text from the FLAGS registry."""
    return [{"name": name, "text": FLAGS.get(name).explanation if name in FLAGS else name}
            for name in names]


def leaderboard_table(table: pd.DataFrame) -> dict[str, Any]:
    """The headline pivot (as `rbv leaderboard` shows it), with intervals and flags per cell."""
    wide = lb.pivot(table)
    if wide.empty:
        return {"columns": [], "rows": []}
    shown = lb.labelled(table)
    last = {(m, d, c): row for (_, row), m, d, c in
            zip(shown.iterrows(), shown["model"], shown["defense"], shown["column"], strict=True)}
    first = shown.drop_duplicates("column").set_index("column")
    columns = [column_info(c, str(first.loc[c, "scenario"]), str(first.loc[c, "metric"]))
               for c in wide.columns]
    order = sorted(range(len(columns)), key=lambda i: group_rank(columns)[columns[i]["group"]])
    columns = [columns[i] for i in order]
    rows = [{"model": model, "defense": defense, "subject": subject_label(model, defense),
             "cells": [cell_info(c["label"], last.get((model, defense, c["label"])))
                       for c in columns]} for model, defense in wide.index]
    mark_best(columns, rows)
    return {"columns": columns, "rows": rows}


def group_rank(columns: list[dict[str, Any]]) -> dict[str, int]:
    """Scenario kinds in order of first appearance, so a kind's columns sit together."""
    rank: dict[str, int] = {}
    for column in columns:
        rank.setdefault(column["group"], len(rank))
    return rank


def mark_best(columns: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    """Set `best` on the best value of every column with more than one value."""
    for i, column in enumerate(columns):
        values = [row["cells"][i]["value"] for row in rows if row["cells"][i]["value"] is not None]
        if len(values) < 2:
            continue
        best = max(values) if column["higher_is_better"] else min(values)
        for row in rows:
            row["cells"][i]["best"] = row["cells"][i]["value"] == best


def flags(table: pd.DataFrame) -> list[dict[str, str]]:
    """Caveats on the leaderboard's numbers, one per (model, defense, column, flag)."""
    if table.empty:
        return []
    shown = lb.labelled(table)
    out: dict[tuple[str, str, str, str], str] = {}
    columns = [shown[c] for c in ("model", "defense", "column", "flags")]
    for model, defense, column, value in zip(*columns, strict=True):
        for entry in flag_entries(lb.row_flags(value)):
            out[(model, defense, column, entry["name"])] = entry["text"]
    return [{"model": m, "defense": d, "scenario": c, "flag": f, "text": t}
            for (m, d, c, f), t in out.items()]


def problems(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Cells that were skipped or errored, with the first line of their reason."""
    bad = rows[rows["status"].isin(["skipped", "error"])].drop_duplicates("cell_key")
    if bad.empty:
        return []
    bad = bad.assign(defense=lb.defense_labels(bad))
    out = []
    for _, row in bad.iterrows():
        params = {k: v for k, v in json.loads(row["params"] or "{}").items()
                  if k != lb.DEFENSE_PARAMS}
        detail = (row["error"] or "").strip()
        lines = detail.splitlines() or [""]
        out.append({"status": row["status"], "model": row["model"], "defense": row["defense"],
                    "scenario": row["scenario"],
                    "params": " ".join(f"{k}={lb.format_value(v)}" for k, v in params.items()),
                    # a traceback's last line names the exception; a skip reason is one line
                    "reason": lines[-1] if row["status"] == "error" else lines[0],
                    "detail": detail[-MAX_DETAIL:]})
    return out
