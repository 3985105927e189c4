"""Inline SVG for the HTML leaderboard: line charts, heatmaps (labelled and dense) and grouped bars,
no libraries.

Every function takes a plot dict from `report_plots` and returns SVG markup. All text and attribute
values go through `el`/`esc` (html.escape), so the markup is safe to embed as is.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from typing import Any

PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#7f7f7f"]
HEAT = ["#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c",
        "#08306b"]
MARGIN = {"left": 56, "right": 18, "top": 14, "bottom": 46}
LABEL_CHARS = 30
CHAR_W = 6.4
"""Approximate width (px) of a character of 11px tick text."""
DODGE = 3.5
"""Horizontal offset (px) between series of a line chart at the same x."""


def esc(text: Any) -> str:
    """Escaped text content."""
    return html.escape(str(text), quote=True)


def el(tag: str, attrs: dict[str, Any] | None = None, *children: str) -> str:
    """An element; attribute names use '-' for '_', None values are left out."""
    text = "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"'
                   for k, v in (attrs or {}).items() if v is not None)
    return f"<{tag}{text}>{''.join(children)}</{tag}>"


def style(index: int) -> tuple[str, str | None]:
    """(colour, dash pattern) of the index-th series."""
    return PALETTE[index % len(PALETTE)], (None if index < len(PALETTE) else "6 3")


def legend(plot: dict[str, Any]) -> list[dict[str, Any]]:
    """Legend entries (name, colour, dash) of a line or bar plot, for the HTML around it."""
    return [{"name": s["name"], "full": s.get("full", s["name"]), "color": style(i)[0],
             "dash": style(i)[1]} for i, s in enumerate(plot.get("series", []))]


def shorten(text: str, limit: int = LABEL_CHARS) -> str:
    """Text cut to `limit` characters with an ellipsis."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def value_text(value: float | None, percent: bool) -> str:
    """A value as shown on a chart: percent with one decimal, or 3 significant digits."""
    if value is None:
        return "–"
    return f"{100 * value:.1f}" if percent else f"{value:.3g}"


def tooltip(label: str, p: dict[str, Any], percent: bool) -> str:
    """"label: 91.5% [88.0, 94.2] n=200" for a point."""
    unit = "%" if percent else ""
    text = f"{label}: {value_text(p['y'], percent)}{unit}"
    if p.get("low") is not None and p.get("high") is not None:
        text += f" [{value_text(p['low'], percent)}, {value_text(p['high'], percent)}]"
    return text + (f" n={p['n']}" if p.get("n") is not None else "")


def y_ticks(plot: dict[str, Any], values: list[float]) -> list[float]:
    """0..1 in fifths for proportions, else about five round steps over the data."""
    if plot.get("percent"):
        return [i / 5 for i in range(6)]
    low, high = min(values + [0.0]), max(values + [1e-9])
    step = 10 ** math.floor(math.log10((high - low) / 5 or 1))
    step *= next(m for m in (1, 2, 5, 10) if (high - low) / (step * m) <= 6)
    return [step * i for i in range(math.floor(low / step), math.ceil(high / step) + 1)]


def frame(width: int, height: int, body: list[str], label: str) -> str:
    """The outer <svg> with a title for screen readers."""
    return el("svg", {"class": "chart", "viewBox": f"0 0 {width} {height}", "width": width,
                      "height": height, "role": "img", "aria-label": label},
              el("title", {}, esc(label)), *body)


def axes(width: int, height: int, ticks: list[float], scale_y: Callable[[float], float],
         plot: dict[str, Any], bottom: float | None = None) -> list[str]:
    """Horizontal grid lines with y tick labels and the two axis titles."""
    left = MARGIN["left"]
    bottom = height - MARGIN["bottom"] if bottom is None else bottom
    out = []
    for tick in ticks:
        y = scale_y(tick)
        out.append(el("line", {"class": "grid", "x1": left, "x2": width - MARGIN["right"],
                               "y1": f"{y:.1f}", "y2": f"{y:.1f}"}))
        label = f"{100 * tick:.0f}" if plot["percent"] else f"{tick:.3g}"
        out.append(el("text", {"class": "tick", "x": left - 6, "y": f"{y + 4:.1f}",
                               "text-anchor": "end"}, esc(label)))
    out.append(el("line", {"class": "axis", "x1": left, "x2": width - MARGIN["right"],
                           "y1": bottom, "y2": bottom}))
    mid = (MARGIN["top"] + bottom) / 2
    out.append(el("text", {"class": "axis-label", "x": 14, "y": f"{mid:.1f}",
                           "transform": f"rotate(-90 14 {mid:.1f})", "text-anchor": "middle"},
                  esc(plot["y_label"])))
    if plot.get("x_label"):
        out.append(el("text", {"class": "axis-label", "x": (left + width - MARGIN["right"]) / 2,
                               "y": height - 8, "text-anchor": "middle"}, esc(plot["x_label"])))
    return out


def whisker(x: float, y1: float, y2: float, color: str) -> str:
    """A vertical error bar with caps."""
    return "".join(el("line", {"class": "whisker", "x1": f"{a:.1f}", "x2": f"{b:.1f}",
                               "y1": f"{c:.1f}", "y2": f"{d:.1f}", "stroke": color})
                   for a, b, c, d in ((x, x, y1, y2), (x - 3, x + 3, y1, y1),
                                      (x - 3, x + 3, y2, y2)))


def line_chart(plot: dict[str, Any], width: int = 520, height: int = 300) -> str:
    """Lines with markers and whiskers, x at the points' values (ticks at the data)."""
    points = [p for s in plot["series"] for p in s["points"]]
    xs = sorted({p["x"] for p in points})
    ticks = y_ticks(plot, [v for p in points for v in (p["y"], p["low"], p["high"])
                           if v is not None])
    left, right = MARGIN["left"] + 14, width - MARGIN["right"] - 14
    top, bottom = MARGIN["top"], height - MARGIN["bottom"]
    span_x = (xs[-1] - xs[0]) or 1

    def sx(x: float) -> float:
        return left + (x - xs[0]) / span_x * (right - left) if len(xs) > 1 else (left + right) / 2

    def sy(y: float) -> float:
        return bottom - (y - ticks[0]) / ((ticks[-1] - ticks[0]) or 1) * (bottom - top)

    body = axes(width, height, ticks, sy, plot)
    texts = {p["x"]: p["x_text"] for p in points}
    for x in xs:
        body.append(el("text", {"class": "tick", "x": f"{sx(x):.1f}", "y": bottom + 16,
                                "text-anchor": "middle"}, esc(texts[x])))
    count = len(plot["series"])
    for i, series in enumerate(plot["series"]):
        color, dash = style(i)
        name = series.get("full", series["name"])
        pts = [p for p in series["points"] if p["y"] is not None]
        shift = (i - (count - 1) / 2) * DODGE  # side by side, so whiskers do not hide each other

        def px(p: dict[str, Any], shift: float = shift) -> float:
            return sx(p["x"]) + shift

        path = " ".join(f"{'M' if j == 0 else 'L'}{px(p):.1f},{sy(p['y']):.1f}"
                        for j, p in enumerate(pts))
        marks = [whisker(px(p), sy(p["low"]), sy(p["high"]), color) for p in pts
                 if p["low"] is not None and p["high"] is not None]
        marks += [el("circle", {"cx": f"{px(p):.1f}", "cy": f"{sy(p['y']):.1f}", "r": 3.5,
                                "fill": color},
                     el("title", {}, esc(tooltip(f"{name} @ {p['x_text']}", p,
                                                 plot["percent"])))) for p in pts]
        body.append(el("g", {"class": "series", "data-series": series["name"]},
                       el("path", {"d": path, "stroke": color, "stroke-dasharray": dash,
                                   "fill": "none", "class": "line"}), *marks))
    return frame(width, height, body, plot["title"])


def heat_color(value: float) -> str:
    """The heat palette colour of a value in [0, 1]."""
    index = round(min(max(value, 0.0), 1.0) * (len(HEAT) - 1))
    return HEAT[index]


def heatmap_chart(plot: dict[str, Any], cell_h: int = 24) -> str:
    """A grid of coloured cells with their values, rows and columns labelled."""
    cell_w = round(min(max(6.4 * max(len(shorten(x, 16)) for x in plot["x"]) + 12, 56), 116))
    label_w = 14 + 6.5 * max(len(shorten(y, 30)) for y in [*plot["y"], plot["y_label"]])
    top = 44
    width = round(label_w + cell_w * len(plot["x"]) + 8)
    height = top + cell_h * len(plot["y"]) + 8
    body = [el("text", {"class": "axis-label", "x": label_w + cell_w * len(plot["x"]) / 2,
                        "y": 13, "text-anchor": "middle"}, esc(plot["x_label"])),
            el("text", {"class": "axis-label", "x": label_w - 6, "y": top - 8,
                        "text-anchor": "end"}, esc(plot["y_label"]))]
    for j, x in enumerate(plot["x"]):
        body.append(el("text", {"class": "tick", "x": label_w + cell_w * (j + 0.5), "y": top - 8,
                                "text-anchor": "middle"}, el("title", {}, esc(x)),
                       esc(shorten(x, 16))))
    for i, y in enumerate(plot["y"]):
        cy = top + cell_h * i
        body.append(el("text", {"class": "tick", "x": label_w - 6, "y": cy + cell_h / 2 + 4,
                                "text-anchor": "end"}, el("title", {}, esc(y)),
                       esc(shorten(y, 30))))
        for j, p in enumerate(plot["cells"][i]):
            cx = label_w + cell_w * j
            fill = heat_color(p["y"]) if p else "#eeeeee"
            dark = bool(p) and p["y"] > 0.55
            label = f"{y} · {plot['x_label']} {plot['x'][j]}"
            body.append(el("g", {"class": "cell"},
                           el("rect", {"x": cx, "y": cy, "width": cell_w - 2,
                                       "height": cell_h - 2, "rx": 2, "fill": fill},
                              el("title", {}, esc(tooltip(label, p, plot["percent"])
                                                  if p else f"{label}: no result"))),
                           el("text", {"class": "cell-value" + (" dark" if dark else ""),
                                       "x": cx + (cell_w - 2) / 2, "y": cy + cell_h / 2 + 3,
                                       "text-anchor": "middle"},
                              esc(value_text(p["y"] if p else None, plot["percent"])))))
    return frame(width, height, body, plot["title"])


def grid_ticks(labels: list[str], most: int = 9) -> set[int]:
    """Indices of the labels shown on a dense axis: every k-th, counted from "0" when present."""
    step = max(1, math.ceil(len(labels) / most))
    anchor = labels.index("0") if "0" in labels else 0
    return {i for i in range(len(labels)) if (i - anchor) % step == 0}


def grid_chart(plot: dict[str, Any], side: int = 320) -> str:
    """A dense heatmap (same plot dict as `heatmap_chart`, values in [0, 1]): small unlabelled
    cells coloured by value (hover one for it), a tick every few rows and columns, a colour bar.
    For grids too large for labelled cells, such as a Fourier heat map of 32 x 32 frequencies."""
    xs, ys = plot["x"], plot["y"]
    cell = max(3, min(24, side // max(len(xs), len(ys), 1)))
    left, top = 32 + CHAR_W * max((len(y) for y in ys), default=1), 10
    right, bottom = left + cell * len(xs), top + cell * len(ys)
    width, height = round(right + 70), round(bottom + 44)
    body = [el("text", {"class": "axis-label", "x": (left + right) / 2, "y": height - 6,
                        "text-anchor": "middle"}, esc(plot["x_label"])),
            el("text", {"class": "axis-label", "x": 12, "y": (top + bottom) / 2,
                        "transform": f"rotate(-90 12 {(top + bottom) / 2})",
                        "text-anchor": "middle"}, esc(plot["y_label"]))]
    body += [el("text", {"class": "tick", "x": left + cell * (j + 0.5), "y": bottom + 14,
                         "text-anchor": "middle"}, esc(xs[j])) for j in sorted(grid_ticks(xs))]
    body += [el("text", {"class": "tick", "x": left - 4, "y": top + cell * (i + 0.5) + 4,
                         "text-anchor": "end"}, esc(ys[i])) for i in sorted(grid_ticks(ys))]
    for i, y in enumerate(ys):
        for j, p in enumerate(plot["cells"][i]):
            label = f"{plot['y_label']} {y} · {plot['x_label']} {xs[j]}"
            body.append(el("rect", {"class": "grid-cell", "x": left + cell * j,
                                    "y": top + cell * i, "width": cell, "height": cell,
                                    "fill": heat_color(p["y"]) if p else "#eeeeee",
                                    "shape-rendering": "crispEdges"},
                           el("title", {}, esc(tooltip(label, p, plot["percent"]) if p
                                               else f"{label}: no result"))))
    step = (bottom - top) / len(HEAT)
    for k, color in enumerate(reversed(HEAT)):
        body.append(el("rect", {"class": "colour-bar", "x": right + 16,
                                "y": f"{top + k * step:.1f}", "width": 12,
                                "height": f"{step + 0.5:.1f}", "fill": color}))
    for value, y in ((1.0, top + 8), (0.0, bottom)):
        body.append(el("text", {"class": "tick", "x": right + 32, "y": y},
                       esc(value_text(value, plot["percent"]) + "%" * plot["percent"])))
    return frame(width, height, body, plot["title"])


def bar_chart(plot: dict[str, Any], bar_w: int = 30, gap: int = 30) -> str:
    """Grouped vertical bars with whiskers; a group per subject, a bar per series."""
    n_bars, groups = len(plot["series"]), plot["groups"]
    group_w = n_bars * bar_w + gap
    labels = [shorten(g, 34) for g in groups]
    rotate = max(CHAR_W * len(label) for label in labels) > group_w - 6
    margin = MARGIN["bottom"] - 20 + (max(len(x) for x in labels) * CHAR_W * 0.5 if rotate else 0)
    width = round(max(360, MARGIN["left"] + len(groups) * group_w + MARGIN["right"]))
    height = round(250 + margin)
    top, bottom = MARGIN["top"] + 8, height - margin
    ticks = y_ticks(plot, [p["y"] for s in plot["series"] for p in s["points"] if p])

    def sy(y: float) -> float:
        return bottom - (y - ticks[0]) / ((ticks[-1] - ticks[0]) or 1) * (bottom - top)

    body = axes(width, height, ticks, sy, {**plot, "x_label": None}, bottom)
    left = MARGIN["left"] + (width - MARGIN["left"] - MARGIN["right"] - len(groups) * group_w) / 2
    for g, (group, label) in enumerate(zip(groups, labels, strict=True)):
        gx = left + g * group_w + gap / 2
        cx, ty = gx + n_bars * bar_w / 2, bottom + 16
        body.append(el("text", {"class": "tick", "x": f"{cx:.1f}", "y": ty,
                                "text-anchor": "end" if rotate else "middle",
                                "transform": f"rotate(-35 {cx:.1f} {ty})" if rotate else None},
                       el("title", {}, esc(group)), esc(label)))
        for i, series in enumerate(plot["series"]):
            if series["points"][g] is not None:
                body.append(bar(series["points"][g], gx + i * bar_w, bar_w - 4, style(i)[0], sy,
                                bottom, f"{group} · {series['name']}", plot["percent"]))
    return frame(width, height, body, plot["title"])


def bar(p: dict[str, Any], x: float, width: float, color: str, sy: Callable[[float], float],
        bottom: float, label: str, percent: bool) -> str:
    """One bar with its whisker and its value above."""
    y = sy(p["y"])
    parts = [el("rect", {"class": "bar", "x": f"{x:.1f}", "y": f"{y:.1f}", "width": width,
                         "height": f"{max(bottom - y, 0.5):.1f}", "fill": color},
                el("title", {}, esc(tooltip(label, p, percent))))]
    top = y
    if p["low"] is not None and p["high"] is not None:
        top = sy(p["high"])
        parts.append(whisker(x + width / 2, sy(p["low"]), top, "#333"))
    parts.append(el("text", {"class": "bar-value", "x": f"{x + width / 2:.1f}",
                             "y": f"{top - 4:.1f}", "text-anchor": "middle"},
                    esc(value_text(p["y"], percent))))
    return el("g", {"class": "bar-group"}, *parts)


CHARTS: dict[str, Callable[[dict[str, Any]], str]] = {
    "line": line_chart, "heatmap": heatmap_chart, "bars": bar_chart, "grid": grid_chart,
}


def render_chart(plot: dict[str, Any]) -> str:
    """The SVG of a plot dict, by its kind."""
    return CHARTS[plot["kind"]](plot)
