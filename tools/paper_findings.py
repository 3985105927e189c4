"""The README's "Paper findings on the embedded data" table, from the stored results of
suites/papers/*.yaml — never typed by hand.

    python tools/paper_findings.py [--results DIR] [--evaluate] [--write README.md]

Each gate of a paper's suite states one claim (`claim:`, the paper's number in `paper:`); its
verdict on the stored rows is the table's "holds here" column: PASSED → yes, XFAIL → no (with the
gate's measured `reason:`), XPASS → yes although the suite expects no, FAILED → no, and the gate
is failing (a claim expected to hold that does not: fix the cause or mark it with its reason).
Without --write the table is printed; with it, the text between `<!-- paper-findings:start -->`
and `<!-- paper-findings:end -->` in the file is replaced, and so is the DTA detail table (every
victim × DTA and its baselines, per-block included) between `<!-- paper-detail:... -->`
markers. --evaluate first runs the suites' missing cells (minutes each on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from robustbench_vit.results.gates import GateOutcome

REPO = Path(__file__).resolve().parents[1]
START, END = "<!-- paper-findings:start -->\n", "<!-- paper-findings:end -->"
HEADER = ("| Paper | Claim | Paper's number | Ours here | Holds here | Why not (measured) |\n"
          "|---|---|---|---|---|---|\n")
VERDICTS = {"PASSED": "yes", "XPASS": "yes (expected no)", "XFAIL": "no",
            "FAILED": "**no — gate failing**"}


def number(value: float | None) -> str:
    """A value as the table shows it: 3 decimals for proportions and ratios alike."""
    return "—" if value is None else f"{value:.3f}"


def ours(outcome: GateOutcome) -> str:
    """"value [low, high]", or "value vs reference (difference [low, high])" for comparisons."""
    value, reference, interval = outcome.value, outcome.reference, outcome.interval
    if value is None:
        return "not measured"
    if reference is not None:
        inside = f" (difference [{interval[0]:+.3f}, {interval[1]:+.3f}])" if interval else ""
        return f"{number(value)} vs {number(reference)}{inside}"
    if interval is not None:
        return f"{number(value)} [{number(interval[0])}, {number(interval[1])}]"
    return number(value)


def row_name(ident: str) -> str:
    """"model[params]" of a gate row id "model/defense/scenario[params]/metric[@checks]"."""
    model, rest = ident.split("/", 1)
    params = rest[rest.index("["):rest.rindex("]") + 1] if "[" in rest else ""
    return model + params


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
        told: set[str] = set()
        for outcome in report.outcomes:
            gate = suite.gates.checks[outcome.gate]
            claim = cell(gate.claim or outcome.id)
            if sum(1 for o in report.outcomes if o.gate == outcome.gate) > 1:
                claim += f" <br><sub>{cell(row_name(outcome.id))}</sub>"
            why = gate.reason if outcome.verdict == "XFAIL" else (
                outcome.message if outcome.verdict == "FAILED" else None)
            if why and why in told:
                why = "〃"
            elif why:
                told.add(why)
            lines.append(f"| {paper} | {claim} | {cell(gate.paper)} | {ours(outcome)} | "
                         f"{VERDICTS[outcome.verdict]} | {cell(why) if why else ''} |\n")
            paper = '〃'
    return "".join(lines)


DETAIL = ("paper_dta", "zheng2024_dta.yaml", "transfer_success_rate", "method")
"""One suite's metric pivoted by a param (victims × DTA and its baselines), written between
`<!-- paper-detail:start -->` and `<!-- paper-detail:end -->`."""
DETAIL_START, DETAIL_END = "<!-- paper-detail:start -->\n", "<!-- paper-detail:end -->"


def detail(results: Path) -> str:
    """DETAIL's pivot: one line per model, one column per value of the param, "value (n)"."""
    import json

    from robustbench_vit.config.load import load_suite
    from robustbench_vit.results.gates import suite_table
    from robustbench_vit.results.store import ResultStore

    name, file, metric, param = DETAIL
    if not (results / "rbv.sqlite").is_file():
        return "(not measured yet)\n"
    suite = load_suite(REPO / "suites" / "papers" / file)
    with ResultStore(results, read_only=True) as store:
        rows = suite_table(suite, store.frame(name))
    rows = rows[rows["metric"] == metric]
    cells: dict[str, dict[str, str]] = {}
    columns: list[str] = []
    for _, r in rows.iterrows():
        params = json.loads(r["params"])
        key = str(params.get(param))
        if key.startswith("dta_layer"):
            key = f"dta block {params.get('attack_layer')}"
        columns += [key] if key not in columns else []
        cells.setdefault(str(r["model"]), {})[key] = f"{100 * float(r['value']):.1f} ({r['n']})"
    head = f"| victim | {' | '.join(columns)} |\n|---|{'---|' * len(columns)}\n"
    body = "".join(f"| {model} | {' | '.join(found.get(c, '—') for c in columns)} |\n"
                   for model, found in cells.items())
    return head + body


def replace_between(page: str, start: str, end: str, text: str) -> str:
    """`page` with the text between the markers `start` and `end` replaced by `text`."""
    head, rest = page.split(start, 1)
    return head + start + text + end + rest.split(end, 1)[1]


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
    for start, end in ((START, END), (DETAIL_START, DETAIL_END)):
        if start not in page or end not in page:
            print(f"{args.write}: no {start.strip()} ... {end} markers", file=sys.stderr)
            return 2
    page = replace_between(page, START, END, text)
    args.write.write_text(replace_between(page, DETAIL_START, DETAIL_END, detail(args.results)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
