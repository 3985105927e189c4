"""The exported HTML leaderboard in headless Chromium: no errors, sorting, filtering, plots.

Needs Playwright for Python and Debian's chromium (/usr/bin/chromium; .ci/run installs it);
skipped with a reason when either is missing. The browser never downloads anything.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from html_results import HOSTILE_MODEL, SUITE, write_results

from robustbench_vit.report.html import export_html

CHROMIUM = Path("/usr/bin/chromium")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
pytestmark = pytest.mark.skipif(not CHROMIUM.is_file() and not shutil.which("chromium"),
                                reason="no chromium at /usr/bin/chromium (apt install chromium)")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("browser")
    return export_html(write_results(folder / "results"), SUITE, folder / "board.html")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = str(CHROMIUM) if CHROMIUM.is_file() else shutil.which("chromium")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True,
                                              args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser: Any, report: Path) -> Iterator[tuple[Any, list[str]]]:
    """The report in a fresh page, with the console errors and page errors it produced."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("dialog", lambda d: (problems.append(f"dialog: {d.message}"), d.dismiss()))
    page.on("request", lambda r: problems.append(f"request: {r.url}")
            if not r.url.startswith("file://") else None)
    page.goto(report.as_uri())
    page.wait_for_load_state("load")
    yield page, problems
    page.close()


def column_index(page: Any, label: str) -> int:
    """The data-col of the header whose data-label is `label`."""
    return int(page.get_attribute(f'th[data-label="{label}"]', "data-col"))


def column_values(page: Any, col: int) -> list[str]:
    """data-value of column `col` in the visible rows, top to bottom."""
    return page.eval_on_selector_all(
        "#leaderboard-table tbody tr:not([hidden])",
        f"rows => rows.map(r => r.cells[{col}].getAttribute('data-value'))")


def test_opens_without_errors_or_requests(page: tuple[Any, list[str]], tmp_path: Path) -> None:
    tab, problems = page
    assert tab.title().startswith(SUITE)
    assert tab.locator("#leaderboard-table tbody tr").count() == 3
    assert tab.locator("#leaderboard-table tbody th", has_text=HOSTILE_MODEL).count() == 1
    assert tab.locator("script").count() == 2  # the data island and the table script
    tab.locator("#leaderboard-table tbody th", has_text=HOSTILE_MODEL).hover()
    tab.screenshot(path=str(tmp_path / "leaderboard.png"), full_page=True)
    assert (tmp_path / "leaderboard.png").stat().st_size > 10_000
    assert problems == []


def test_clicking_a_header_sorts_rows(page: tuple[Any, list[str]]) -> None:
    tab, problems = page
    col = column_index(tab, "clean accuracy")
    header = tab.locator(f'th[data-col="{col}"]')
    assert [float(v) for v in column_values(tab, col)] == [0.9, 0.7, 0.8]  # suite order
    header.click()  # higher is better: best first
    assert [float(v) for v in column_values(tab, col)] == [0.9, 0.8, 0.7]
    assert header.get_attribute("aria-sort") == "descending"
    header.click()
    assert [float(v) for v in column_values(tab, col)] == [0.7, 0.8, 0.9]
    assert header.get_attribute("aria-sort") == "ascending"
    tab.locator('th[data-col="0"]').click()  # text column: alphabetical
    models = tab.eval_on_selector_all("#leaderboard-table tbody tr",
                                      "rows => rows.map(r => r.dataset.model)")
    assert models == sorted(models)
    assert problems == []


def test_filters_hide_rows_and_columns(page: tuple[Any, list[str]]) -> None:
    tab, problems = page
    rows = tab.locator("#leaderboard-table tbody tr")
    tab.fill("#filter-defense", "smooth")
    assert [rows.nth(i).is_visible() for i in range(3)] == [False, True, False]
    assert tab.inner_text("#row-count") == "1 of 3 rows"
    tab.fill("#filter-defense", "")
    tab.fill("#filter-model", "script")
    assert [rows.nth(i).is_visible() for i in range(3)] == [False, False, True]
    tab.fill("#filter-model", "")
    tab.fill("#filter-scenario", "attack:pgd")
    visible = tab.eval_on_selector_all(
        "#leaderboard-table thead tr.columns th[data-label]",
        "ths => ths.filter(t => !t.hidden).map(t => t.dataset.label)")
    assert visible and all(label.startswith("attack:pgd") for label in visible)
    col = column_index(tab, "clean accuracy")
    assert not tab.locator(f'th[data-col="{col}"]').is_visible()
    assert not rows.nth(0).locator("td, th").nth(col).is_visible()
    assert tab.locator("thead tr.groups th.group:not([hidden])").count() == 1
    tab.fill("#filter-scenario", "")
    assert tab.locator(f'th[data-col="{col}"]').is_visible()
    assert problems == []


def test_plots_render(page: tuple[Any, list[str]]) -> None:
    tab, problems = page
    charts = tab.locator("svg.chart")
    assert charts.count() == 8
    for i in range(charts.count()):
        box = charts.nth(i).bounding_box()
        assert box and box["width"] > 100 and box["height"] > 80
    lines = tab.locator("svg.chart g.series path.line")
    assert lines.count() >= 3
    assert lines.first.bounding_box()["width"] > 50
    assert tab.locator("svg.chart rect.bar").count() == 2 + 2 * 3  # certify + order bars
    assert problems == []
