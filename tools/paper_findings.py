"""The README's "Paper findings on the embedded data" table, from the stored results of
suites/papers/*.yaml — never typed by hand.

    python tools/paper_findings.py [--results DIR] [--evaluate] [--write README.md]

Each gate of a paper's suite states one claim (`claim:`, the paper's number in `paper:`); its
verdict on the stored rows is the table's "holds here" column: PASSED → yes, XFAIL → no (with the
gate's measured `reason:`), XPASS → yes although the suite expects no, FAILED → no, and the gate
is failing (a claim expected to hold that does not: fix the cause or mark it with its reason).
Without --write the table is printed; with it, the text between `<!-- paper-findings:start -->`
and `<!-- paper-findings:end -->` in the file is replaced. --evaluate first runs the suites'
missing cells (minutes each on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- paper-findings:start -->\n", "<!-- paper-findings:end -->"
HEADER = ("| Paper | Claim | Paper's number | Ours here | Holds here | Why not (measured) |\n"
          "|---|---|---|---|---|---|\n")
VERDICTS = {"PASSED": "yes", "XPASS": "yes (expected no)", "XFAIL": "no",
            "FAILED": "**no — gate failing**"}


def number(value: float | None) -> str:
    """A value as the table shows it: 3 decimals for proportions and ratios alike."""
    return "—" if value is None else f"{value:.3f}"


def ours(outcome: object) -> str:
    """"value [low, high]", or "value vs reference (difference [low, high])" for comparisons."""
    value = getattr(outcome, "value", None)
    reference = getattr(outcome, "reference", None)
    interval = getattr(outcome, "interval", None)
    if value is None:
        return "not measured"
    if reference is not None:
        inside = f" (difference [{interval[0]:+.3f}, {interval[1]:+.3f}])" if interval else ""
        return f"{number(value)} vs {number(reference)}{inside}"
    if interval is not None:
        return f"{number(value)} [{number(interval[0])}, {number(interval[1])}]"
    return number(value)


def cell(text: str | None) -> str:
    """Text made safe for one Markdown table cell."""
    return " ".join((text or "").split()).replace("|", "\\|") or "—"


def table(results: Path, evaluate: bool) -> str:
    """The Markdown table over every suite of suites/papers/, in file order."""
    from robustbench_vit.config.load import load_suite
    from robustbench_vit.execution.gating import run_gates

    lines = [HEADER]
    for path in sorted((REPO / "suites" / "papers").glob("*.yaml")):
        suite = load_suite(path)
        report = run_gates(suite, results, REPO / "results" / "baselines", evaluate=evaluate)
        paper = cell(suite.description or suite.name)
        for outcome in report.outcomes:
            gate = suite.gates.checks[outcome.gate]
            claim = cell(gate.claim or outcome.id)
            if sum(1 for o in report.outcomes if o.gate == outcome.gate) > 1:
                claim += f" <br><sub>{cell(outcome.id)}</sub>"
            why = gate.reason if outcome.verdict == "XFAIL" else (
                outcome.message if outcome.verdict == "FAILED" else None)
            lines.append(f"| {paper} | {claim} | {cell(gate.paper)} | {ours(outcome)} | "
                         f"{VERDICTS[outcome.verdict]} | {cell(why) if why else ''} |\n")
            paper = '〃'
    return "".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "results",
                        help="results folder the suites were evaluated into (default: results)")
    parser.add_argument("--evaluate", action="store_true", help="run missing cells first")
    parser.add_argument("--write", type=Path, help="Markdown file whose marked section to replace")
    args = parser.parse_args(argv)
    text = table(args.results, args.evaluate)
    if args.write is None:
        sys.stdout.write(text)
        return 0
    page = args.write.read_text()
    if START not in page or END not in page:
        print(f"{args.write}: no {START.strip()} ... {END} markers", file=sys.stderr)
        return 2
    head, rest = page.split(START, 1)
    args.write.write_text(head + START + text + END + rest.split(END, 1)[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
