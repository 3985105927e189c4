"""Screenshot an exported HTML leaderboard with Debian's headless Chromium (docs/leaderboard.png).

    rbv evaluate suites/quickstart.yaml --results /tmp/qs -q
    rbv export-html quickstart --results /tmp/qs -o /tmp/qs/leaderboard.html
    .venv/bin/python tools/screenshot.py /tmp/qs/leaderboard.html docs/leaderboard.png
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1940, help="clip height (px)")
    args = parser.parse_args()
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto(args.page.resolve().as_uri())
        page.wait_for_load_state("load")
        page.screenshot(path=str(args.png), clip={"x": 0, "y": 0, "width": args.width,
                                                  "height": args.height})
        browser.close()


if __name__ == "__main__":
    main()
