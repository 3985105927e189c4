"""The HTML leaderboard: page model, self-contained output, escaping, plots and `rbv export-html`.

A results store is written row by row (no models run) with every kind of plot input, a flagged
non-differentiable defense, a skipped and an errored cell, and hostile model and defense names.
"""

from __future__ import annotations

import json
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from html_results import (
    EPS,
    HOSTILE_DEFENSE,
    HOSTILE_ERROR,
    HOSTILE_MODEL,
    NOT_DIFFERENTIABLE,
    SUITE,
    write_results,
)

from robustbench_vit.core.registry import FLAGS
from robustbench_vit.report.html import (
    SuiteNotFound,
    export_html,
    render_html,
    resolve_suite,
    script_json,
)
from robustbench_vit.report.page import build_page
from robustbench_vit.report.svg import el
from robustbench_vit.results import table as lb
from robustbench_vit.results.store import ResultStore


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_results(tmp_path_factory.mktemp("html") / "results")


@pytest.fixture(scope="module")
def page(results: Path) -> dict:
    with ResultStore(results) as store:
        return build_page(store.frame(SUITE), SUITE)


@pytest.fixture(scope="module")
def html_text(results: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = export_html(results, SUITE, tmp_path_factory.mktemp("out") / "board.html")
    return path.read_text(encoding="utf-8")


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text of <script> elements."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(text: str) -> Elements:
    parser = Elements()
    parser.feed(text)
    return parser


# --- page model -----------------------------------------------------------------------------------

def test_table_matches_the_leaderboard_pivot(results: Path, page: dict) -> None:
    with ResultStore(results) as store:
        wide = lb.pivot(lb.long_table(store.frame(SUITE)))
    board = page["leaderboard"]
    assert [(r["model"], r["defense"]) for r in board["rows"]] == list(wide.index)
    assert sorted(c["label"] for c in board["columns"]) == sorted(wide.columns)
    for row in board["rows"]:
        for column, cell_ in zip(board["columns"], row["cells"], strict=True):
            expected = wide.loc[(row["model"], row["defense"]), column["label"]]
            assert cell_["value"] == pytest.approx(expected, nan_ok=True) or (
                cell_["value"] is None and pd.isna(expected))


def test_cells_carry_intervals_sizes_flags_and_best(page: dict) -> None:
    board = page["leaderboard"]
    labels = [c["label"] for c in board["columns"]]
    clean = labels.index("clean accuracy")
    vit = board["rows"][0]["cells"][clean]
    assert vit["value"] == pytest.approx(0.9) and vit["n"] == 100 and vit["text"] == "90.0"
    assert vit["ci"][0] < 0.9 < vit["ci"][1] and vit["best"]
    pgd = labels.index("attack:pgd eps=8/255 robust_accuracy")  # the flag is not a column
    smoothing = next(r for r in board["rows"] if r["defense"] == "smoothing(size=4)")
    explanation = FLAGS.get(NOT_DIFFERENTIABLE).explanation
    assert smoothing["cells"][pgd]["flags"] == [{"name": NOT_DIFFERENTIABLE,
                                                 "text": explanation}]
    assert not smoothing["cells"][clean]["best"]
    assert page["flags"] == [
        {"model": "vit", "defense": "smoothing(size=4)", "flag": NOT_DIFFERENTIABLE,
         "scenario": f"attack:pgd eps={eps} robust_accuracy", "text": explanation}
        for eps in ("2/255", "8/255")]


def test_provenance(page: dict) -> None:
    prov = page["provenance"]
    assert (prov["suite"], prov["suite_version"], prov["seed"]) == (SUITE, [3], [7])
    assert prov["cells"] == {"ok": 3 * 6 + 1, "skipped": 1, "error": 1}
    assert prov["devices"] == ["cpu"] and prov["runs"] == 1
    assert set(prov["versions"]) == {"robustbench_vit", "torch", "timm"}
    assert all(len(v) == 1 for v in prov["versions"].values())


def test_problems_name_the_reason(page: dict) -> None:
    problems = {p["status"]: p for p in page["problems"]}
    assert problems["skipped"]["reason"] == "certify needs the smoothing defense"
    assert problems["error"]["reason"] == HOSTILE_ERROR  # a traceback's last line
    assert problems["error"]["model"] == HOSTILE_MODEL


def plots_by_title(page: dict) -> dict[str, dict]:
    return {p["title"]: p for p in page["plots"]}


def test_plots_cover_every_scenario(page: dict) -> None:
    plots = plots_by_title(page)
    pgd = plots["attack:pgd"]
    assert pgd["kind"] == "line" and len(pgd["series"]) == 3
    vit = pgd["series"][0]
    assert vit["name"] == "vit / none"
    assert [p["x"] for p in vit["points"]] == pytest.approx(EPS)
    assert [p["y"] for p in vit["points"]] == pytest.approx([0.45, 0.22])
    assert all(p["low"] < p["y"] < p["high"] and p["n"] == 100 for p in vit["points"])
    severity = plots["accuracy vs corruption severity"]
    assert [p["x_text"] for p in severity["series"][0]["points"]] == ["clean", "1", "3"]
    assert [p["y"] for p in severity["series"][0]["points"]] == pytest.approx([0.9, 0.795, 0.595])
    heat = plots["vit / none"]
    assert heat["kind"] == "heatmap" and heat["y"] == ["fog", "snow"] and heat["x"] == ["1", "3"]
    assert heat["cells"][1][1]["y"] == pytest.approx(0.59)
    pruned = plots["accuracy vs pruned layers"]["series"][0]["points"]
    assert [(p["x"], p["low"], p["high"]) for p in pruned] == [(0, None, None), (1, 0.69, 0.70)]
    assert [p["y"] for p in pruned] == pytest.approx([0.9, 0.695])
    order = plots["accuracy vs block order"]
    assert order["series"][1]["points"][0]["y"] == pytest.approx(0.85)
    certify = plots["certify"]
    assert certify["kind"] == "bars" and certify["groups"] == ["vit / smoothing"]
    assert [s["points"][0]["y"] for s in certify["series"]] == pytest.approx([0.2, 0.65])


def test_an_empty_suite_renders(tmp_path: Path) -> None:
    with ResultStore(tmp_path) as store:
        page = build_page(store.frame("nothing"), "nothing")
    text = render_html(page)
    assert page["leaderboard"] == {"columns": [], "rows": []} and page["plots"] == []
    assert "No results yet." in text


# --- the HTML file --------------------------------------------------------------------------------

def test_file_is_self_contained(html_text: str) -> None:
    assert "http://" not in html_text and "https://" not in html_text
    assert "//" not in re.sub(r"<script>.*?</script>", "", html_text, flags=re.S).replace(
        "file://", "")
    for tag, attrs in parse(html_text).tags:
        assert tag not in ("link", "img", "iframe", "object", "embed")
        assert "src" not in attrs, (tag, attrs)
        assert attrs.get("href") is None or attrs["href"].startswith("#"), (tag, attrs)
    assert "@import" not in html_text and "url(" not in html_text


def test_hostile_names_render_as_text(html_text: str) -> None:
    assert HOSTILE_MODEL not in html_text and "<script>alert" not in html_text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text
    parsed = parse(html_text)
    scripts = [attrs for tag, attrs in parsed.tags if tag == "script"]
    assert scripts == [{"type": "application/json", "id": "rbv-data"}, {}]
    for _, attrs in parsed.tags:
        assert not any(name.startswith("on") for name in attrs), attrs  # no event handlers
    text = "".join(parsed.text)
    assert HOSTILE_MODEL in text and HOSTILE_DEFENSE.strip('"').strip() in text
    rows = [attrs for tag, attrs in parsed.tags if tag == "tr" and "data-model" in attrs]
    assert {r["data-model"] for r in rows} == {"vit", HOSTILE_MODEL}
    assert f"{HOSTILE_DEFENSE}(note={HOSTILE_DEFENSE})" in {r["data-defense"] for r in rows}


def embedded_json(html_text: str) -> str:
    match = re.search(r'<script type="application/json" id="rbv-data">(.*?)</script>',
                      html_text, flags=re.S)
    assert match
    return match.group(1)


def test_embedded_json_is_escaped_and_round_trips(html_text: str, page: dict) -> None:
    raw = embedded_json(html_text)
    assert not set("<>&") & set(raw)
    data = json.loads(raw)
    assert data["suite"] == SUITE
    assert {r["model"] for r in data["leaderboard"]["rows"]} == {"vit", HOSTILE_MODEL}
    assert any(p["reason"] == HOSTILE_ERROR for p in data["problems"])
    assert data["leaderboard"] == json.loads(json.dumps(page["leaderboard"]))


def test_script_json_escapes_markup() -> None:
    text = script_json({"a": "</script><!-- & -->"})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"a": "</script><!-- & -->"}


def test_svg_elements_escape_text_and_attributes() -> None:
    svg = el("text", {"data_x": '"><b>', "skip": None}, "ok")
    assert svg == '<text data-x="&quot;&gt;&lt;b&gt;">ok</text>'


def test_page_has_table_controls_and_plots(html_text: str) -> None:
    parsed = parse(html_text)
    ids = {attrs.get("id") for _, attrs in parsed.tags}
    assert {"leaderboard-table", "filter-model", "filter-defense", "filter-scenario",
            "provenance", "flags", "problems"} <= ids
    headers = [a for t, a in parsed.tags if t == "th" and "sortable" in (a.get("class") or "")]
    assert len(headers) == 2 + len(json.loads(embedded_json(html_text))["leaderboard"]["columns"])
    assert sum(1 for t, _ in parsed.tags if t == "svg") == 8
    text = "".join(parsed.text)
    for label in ("robust accuracy (%)", "ε", "severity", "encoder blocks removed",
                  "certified accuracy", "smoothed accuracy", NOT_DIFFERENTIABLE,
                  FLAGS.get(NOT_DIFFERENTIABLE).explanation):
        assert label in text, label


# --- suite selection and the CLI ---------------------------------------------------------------

def test_resolve_suite(results: Path) -> None:
    assert resolve_suite(results, SUITE) == SUITE
    with pytest.raises(SuiteNotFound, match="2 suites"):
        resolve_suite(results, None)
    with pytest.raises(SuiteNotFound, match="'missing'.*stored: htmltest, second"):
        resolve_suite(results, "missing")


def rbv(rbv_bin: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([rbv_bin, *args], capture_output=True, text=True, timeout=300)


def test_cli_writes_the_file(rbv_bin: str, results: Path, tmp_path: Path) -> None:
    target = tmp_path / "sub" / "board.html"
    proc = rbv(rbv_bin, "export-html", SUITE, "--results", str(results), "-o", str(target))
    assert proc.returncode == 0, proc.stderr
    assert str(target) in proc.stdout
    assert target.read_text(encoding="utf-8").startswith("<!doctype html>")
    proc = rbv(rbv_bin, "export-html", "--suite", "second", "--results", str(results))
    assert proc.returncode == 0, proc.stderr
    assert "second" in (results / "leaderboard.html").read_text(encoding="utf-8")


@pytest.mark.parametrize(("args", "message"), [
    (["missing"], "no results of suite 'missing'"),
    ([], "holds 2 suites"),
])
def test_cli_suite_not_in_results(rbv_bin: str, results: Path, tmp_path: Path,
                                  args: list[str], message: str) -> None:
    proc = rbv(rbv_bin, "export-html", *args, "--results", str(results),
               "-o", str(tmp_path / "x.html"))
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.html").exists()


def test_cli_without_database(rbv_bin: str, tmp_path: Path) -> None:
    proc = rbv(rbv_bin, "export-html", "--results", str(tmp_path / "none"))
    assert proc.returncode == 2 and "no results database" in proc.stderr
