"""The HTML leaderboard: one self-contained file (inline CSS, JS and SVG; no network).

`export_html(results, suite, path)` reads the store, `build_page` (report_page) gathers a plain
page model, and `render_html` renders it through an autoescaped Jinja template. The page model is
also embedded as JSON (`<script type="application/json" id="rbv-data">`) for machine readers.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from ..core.cache import atomic_path
from ..core.errors import RbvError
from ..core.versions import rbv_version
from .page import build_page
from .svg import legend, render_chart

TEMPLATE = "leaderboard.html"


class SuiteNotFound(RbvError):
    """The results database has no rows of the requested suite."""

    exit_code = 2


def script_json(data: Any) -> str:
    """JSON safe inside a <script> element: <, > and & as unicode escapes (no "</script>")."""
    text = json.dumps(data, ensure_ascii=True, allow_nan=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _environment() -> Any:
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("robustbench_vit.report", "templates"),
                              autoescape=True, undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)


def render_html(page: dict[str, Any]) -> str:
    """The page as one HTML document (every user string escaped by the template)."""
    from markupsafe import Markup

    # SVG markup is built by svg_charts, which escapes every text and attribute it writes
    charts = [{**plot, "svg": Markup(render_chart(plot)), "legend": legend(plot)}
              for plot in page["plots"]]
    sections = {plot["section"]: [c for c in charts if c["section"] == plot["section"]]
                for plot in page["plots"]}
    return _environment().get_template(TEMPLATE).render(
        page=page, view=table_view(page), sections=sections,
        data_json=Markup(script_json(page)))


def table_view(page: dict[str, Any]) -> dict[str, Any]:
    """Display strings of the leaderboard: header parts, column groups, tooltips, ± and badges."""
    board = page["leaderboard"]
    columns: list[dict[str, Any]] = []
    groups: list[dict[str, Any]] = []
    for column in board["columns"]:
        if not groups or groups[-1]["name"] != column["group"]:
            groups.append({"id": str(len(groups)), "name": column["group"], "span": 0})
        groups[-1]["span"] += 1
        name = column["scenario"].split(":", 1)[1] if ":" in column["scenario"] else ""
        columns.append({**column, "group_id": groups[-1]["id"], "name": name,
                        "metric_text": column["metric"].replace("_", " ")})
    rows = [{**row, **split_defense(row["defense"]), "issues": issue_text(page["problems"], row),
             "cells": [cell_view(cell, column)
                       for cell, column in zip(row["cells"], columns, strict=True)]}
            for row in board["rows"]]
    return {"columns": columns, "groups": groups, "rows": rows,
            "scenarios": list(dict.fromkeys(c["scenario"] for c in columns)),
            "problems": [{**p, **split_defense(p["defense"])} for p in page["problems"]],
            "generator": rbv_version()}


def split_defense(label: str) -> dict[str, str]:
    """"name(k=v,...)" as {"defense_name": name, "defense_params": "k=v, ..."} (for wrapping)."""
    name, _, params = label.partition("(")
    return {"defense_name": name, "defense_params": params[:-1].replace(",", ", ")}


def issue_text(problems: list[dict[str, Any]], row: dict[str, Any]) -> str:
    """"2 skipped, 1 error" for a leaderboard row ("" when none of its cells had problems)."""
    statuses = Counter(p["status"] for p in problems
                       if (p["model"], p["defense"]) == (row["model"], row["defense"]))
    return ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))


def cell_view(cell: dict[str, Any], column: dict[str, Any]) -> dict[str, Any]:
    """A table cell with its tooltip ("95% CI [a, b], n=...") and ± half-width text."""
    scale, unit = (100, "%") if column["proportion"] else (1, "")
    tip, pm = [], ""
    if cell["ci"]:
        low, high = (scale * v for v in cell["ci"])
        tip.append(f"95% CI [{low:.1f}, {high:.1f}]{unit}" if scale == 100
                   else f"95% CI [{low:.3g}, {high:.3g}]")
        pm = f"±{(high - low) / 2:.1f}" if scale == 100 else f"±{(high - low) / 2:.2g}"
    if cell["n"] is not None:
        tip.append(f"n={cell['n']}")
    flag_text = "; ".join(f"{f['name']}: {f['text']}" for f in cell["flags"])
    if flag_text:
        tip.append(f"flagged ({flag_text})")
    return {**cell, "tip": ", ".join(tip), "pm": pm, "flag_text": flag_text}


def suites_in(results: Path) -> list[str]:
    """Names of the suites stored in a results folder."""
    from ..results.store import ResultStore

    with ResultStore(results, read_only=True) as store:
        return sorted(set(store.frame()["suite"].dropna()))


def resolve_suite(results: Path, suite: str | None) -> str:
    """The suite to export: the one given (it must be stored), or the only one stored."""
    stored = suites_in(results)
    if suite is not None and suite not in stored:
        raise SuiteNotFound(f"no results of suite {suite!r} in {results} (stored: "
                            f"{', '.join(stored) or 'none'})")
    if suite is None and len(stored) != 1:
        raise SuiteNotFound(f"{results} holds {len(stored)} suites ({', '.join(stored) or 'none'})"
                            "; name one with --suite")
    return suite or stored[0]


def export_html(results: Path, suite: str | None, path: Path) -> Path:
    """Write the leaderboard of `suite` (default: the only stored one) to `path`; return it."""
    from ..results.store import ResultStore

    name = resolve_suite(results, suite)
    with ResultStore(results, read_only=True) as store:
        page = build_page(store.frame(name), name)
    text = render_html(page)
    with atomic_path(path) as tmp:  # a failed write leaves the previous page as it was
        tmp.write_text(text, encoding="utf-8")
    return path
