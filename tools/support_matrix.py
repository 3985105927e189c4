"""Rewrite the support matrix in a Markdown file (README.md) from `rbv plan suites/families.yaml
--format markdown`, between the markers `<!-- support-matrix:start -->` and `...:end -->`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- support-matrix:start -->\n", "<!-- support-matrix:end -->"


def main(target: str) -> None:
    rbv = Path(sys.executable).parent / "rbv"
    table = subprocess.run([str(rbv), "plan", str(REPO / "suites" / "families.yaml"),
                            "--format", "markdown"],
                           capture_output=True, text=True, check=True, cwd=REPO).stdout
    path = Path(target)
    text = path.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{path}: no {START.strip()} ... {END} markers")
    head, rest = text.split(START, 1)
    path.write_text(head + START + table + END + rest.split(END, 1)[1])


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(REPO / "README.md"))
