"""The `rbv` command line: thin commands that delegate to the library.
Exit 0 ok, 1 failures, 2 bad input."""

from __future__ import annotations

import errno
import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from .core.errors import RbvError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Robustness benchmark suite for Vision Transformers.")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ResultsOpt = Annotated[Path, typer.Option("--results", help="Folder of the results database.")]
SuiteArg = Annotated[Path, typer.Argument(help="Suite YAML file.")]
KINDS = ("attacks", "defenses", "scenarios", "datasets", "metrics", "zoo", "corruptions",
         "aggregates", "annotations", "plots", "families", "flags")


def fail(exc: RbvError) -> typer.Exit:
    """Print a user error (no traceback) and return the exit to raise."""
    err.print(f"[bold red]error:[/] {escape(str(exc))}", markup=True, highlight=False)
    return typer.Exit(exc.exit_code)


@app.command()
def evaluate(
    suite: SuiteArg,
    results: ResultsOpt = Path("results"),
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda | cuda:N")] = None,
    backend: Annotated[str | None,
                       typer.Option(help="Runner: local | ray (default: the suite's).")] = None,
    address: Annotated[str | None,
                       typer.Option(help="Ray cluster address (default: a local cluster).")] = None,
    num_cpus: Annotated[float | None, typer.Option(help="CPUs per cell task (ray).")] = None,
    num_gpus: Annotated[float | None, typer.Option(help="GPUs per cell task (ray).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Run a suite (finished cells are skipped), then print its leaderboard."""
    from .config.devices import check_device, runs_here
    from .config.load import load_suite
    from .execution.progress import RichProgress
    from .execution.run import run_suite

    try:
        loaded = load_suite(suite)
        if runs_here(loaded, backend):
            check_device(loaded, device)
        _print_plan(loaded, err)
        with RichProgress(err, disable=quiet) as progress:
            summary = run_suite(loaded, results, device=device, backend=backend, progress=progress,
                                runner_options={"address": address, "num_cpus": num_cpus,
                                                "num_gpus": num_gpus})
    except RbvError as exc:
        raise fail(exc) from None
    except KeyboardInterrupt:
        err.print("interrupted: finished cells are stored; run the same command again to resume")
        raise typer.Exit(130) from None
    _print_leaderboard(results, loaded.name, "table")
    elsewhere = f", {summary.elsewhere} done by another run" if summary.elsewhere else ""
    err.print(f"{summary.ok} ok, {summary.skipped} skipped, {len(summary.errors)} errors, "
              f"{summary.already_done} already stored{elsewhere} ({summary.seconds:.1f}s)")
    for where, message in summary.errors:
        first = message.splitlines()[0] if message else ""
        err.print(f"[red]ERROR[/] {escape(f'{where}: {first}')}", highlight=False)
    raise typer.Exit(1 if summary.errors else 0)


@app.command()
def validate(suite: SuiteArg) -> None:
    """Parse a suite and build every component; run nothing."""
    from .config.devices import check_device, runs_here
    from .config.load import load_suite

    try:
        loaded = load_suite(suite)
        if runs_here(loaded):
            check_device(loaded)
    except RbvError as exc:
        raise fail(exc) from None
    cells = loaded.cells()
    out.print(f"{suite}: valid — {len(loaded.models)} models, {len(loaded.scenarios)} scenarios, "
              f"{len(cells)} cells", highlight=False, markup=False)
    _print_plan(loaded, out)


def _print_plan(loaded: Any, console: Console) -> None:
    """List the (model, defense, scenario) combinations that will be skipped, and why."""
    from .execution.plan import plan_skips

    skips = plan_skips(loaded)
    if not skips:
        console.print("plan: nothing will be skipped", highlight=False, markup=False)
    else:
        console.print(f"plan: {len(skips)} model / defense / scenario combinations will be "
                      "skipped:", highlight=False, markup=False)
        for skip in skips:
            console.print(f"  skip {skip.line()}", highlight=False, markup=False)


@app.command()
def plan(
    suite: SuiteArg,
    format: Annotated[str, typer.Option("--format", "-f", help="text | markdown")] = "text",
) -> None:
    """List what the suite will skip (model / defense / scenario) and why; run nothing.

    `--format markdown` prints the support matrix (model × defense, model × scenario).
    """
    from .config.load import load_suite
    from .execution.plan import defense_label, plan_skips, scenario_label
    from .report.support import support_markdown

    if format not in ("text", "markdown"):
        err.print(f"error: --format must be text or markdown, not {format!r}")
        raise typer.Exit(2)
    try:
        loaded = load_suite(suite)
    except RbvError as exc:
        raise fail(exc) from None
    if format == "text":
        _print_plan(loaded, out)
        return
    cells = loaded.cells()
    models = list(dict.fromkeys(c.model.name for c in cells))
    defenses = list(dict.fromkeys(defense_label(c) for c in cells))
    scenarios = list(dict.fromkeys(scenario_label(c) for c in cells))
    out.print(support_markdown(plan_skips(loaded), models, defenses, scenarios), end="",
              highlight=False, markup=False)


@app.command()
def leaderboard(
    results: ResultsOpt = Path("results"),
    suite: Annotated[str | None, typer.Option(help="Only this suite.")] = None,
    format: Annotated[str, typer.Option("--format", "-f",
                                        help="table | csv | json | markdown")] = "table",
) -> None:
    """Print the leaderboard of stored results."""
    if format not in ("table", "csv", "json", "markdown"):
        err.print(f"error: --format must be table, csv, json or markdown, not {format!r}")
        raise typer.Exit(2)
    _print_leaderboard(results, suite, format)


def _print_leaderboard(results: Path, suite: str | None, fmt: str) -> None:
    from .results import table as lb
    from .results.store import ResultStore

    try:
        with ResultStore(results, read_only=True) as store:
            table = lb.long_table(store.frame(suite))
    except RbvError as exc:
        raise fail(exc) from None
    if fmt == "json":
        sys.stdout.write(lb.to_json(table) + "\n")
        return
    wide = lb.pivot(table)
    if wide.empty:
        err.print("no results yet")
        return
    sys.stdout.write(lb.to_text(wide, fmt) + "\n")
    notes = lb.flag_notes(table) if fmt != "csv" else []
    if notes:  # a flagged number may come from an attack that could not work
        sys.stdout.write("\nflagged (attack-failure indicators; `rbv ls flags` explains each):\n"
                         + "".join(f"  {note}\n" for note in notes))


@app.command("export-html")
def export_html(
    suite_name: Annotated[str | None, typer.Argument(
        metavar="SUITE_NAME", help="Suite to export (default: the only stored one).")] = None,
    results: ResultsOpt = Path("results"),
    suite: Annotated[str | None, typer.Option(help="Suite to export (same as SUITE_NAME).")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="HTML file to write (default: <results>/leaderboard.html).")] = None,
) -> None:
    """Write the leaderboard as one self-contained HTML file (tables, plots, provenance)."""
    from .report.html import export_html as write_html

    if suite_name and suite and suite_name != suite:
        err.print(f"error: SUITE_NAME {suite_name!r} and --suite {suite!r} disagree")
        raise typer.Exit(2)
    try:
        path = write_html(results, suite_name or suite, output or results / "leaderboard.html")
    except RbvError as exc:
        raise fail(exc) from None
    out.print(f"wrote {path}", highlight=False, markup=False)


BaselinesOpt = Annotated[Path, typer.Option("--baselines", help="Folder of baseline CSV files.")]
baseline_app = typer.Typer(no_args_is_help=True, help="Baselines that baseline gates compare to.")
app.add_typer(baseline_app, name="baseline")


@app.command()
def gate(
    suite: SuiteArg,
    results: ResultsOpt = Path("results"),
    baselines: BaselinesOpt = Path("results/baselines"),
    evaluate: Annotated[bool | None, typer.Option(
        "--evaluate/--no-evaluate", help="Run missing cells first (default: the suite's "
        "`gates.evaluate`).")] = None,
) -> None:
    """Check the suite's gates; pytest-like lines, exit 1 when one fails."""
    import time

    from .config.load import load_suite
    from .execution.gating import run_gates
    from .execution.progress import RichProgress

    start = time.perf_counter()
    try:
        loaded = load_suite(suite)
        if not loaded.gates.checks:
            err.print(f"error: {suite}: the suite has no gates")
            raise typer.Exit(2)
        with RichProgress(err) as progress:
            report = run_gates(loaded, results, baselines, evaluate=evaluate, progress=progress)
    except RbvError as exc:
        raise fail(exc) from None
    styles = {"PASSED": "green", "FAILED": "bold red", "XFAIL": "yellow", "XPASS": "bold yellow"}
    for outcome in report.outcomes:
        verdict = outcome.verdict
        why = f" (expected to fail: {outcome.expected_failure})" if outcome.expected_failure else ""
        out.print(f"{escape(str(suite))}::{escape(outcome.id)} [{styles[verdict]}]{verdict}[/]  "
                  f"{escape(outcome.message)}{escape(why)}", highlight=False)
    if report.missing_cells:
        err.print(f"note: {report.missing_cells} of the suite's cells have no stored result "
                  "(`rbv evaluate` or --evaluate runs them)", highlight=False)
    tally = {v: sum(1 for o in report.outcomes if o.verdict == v) for v in styles}
    failed = tally["FAILED"]
    words = {"FAILED": "failed", "PASSED": "passed", "XFAIL": "xfailed", "XPASS": "xpassed"}
    summary = ", ".join(f"{tally[v]} {words[v]}" for v in words if tally[v])
    colour = "red" if failed else "green"
    out.print(f"[{colour}]{'=' * 10} {summary} in {time.perf_counter() - start:.2f}s "
              f"{'=' * 10}[/]", highlight=False)
    raise typer.Exit(1 if failed else 0)


@baseline_app.command("save")
def baseline_save(
    suite: SuiteArg,
    results: ResultsOpt = Path("results"),
    baselines: BaselinesOpt = Path("results/baselines"),
) -> None:
    """Write results/baselines/<suite>.csv from the stored results of the suite's current cells."""
    from .config.load import load_suite
    from .results.gates import missing_cells, save_baseline, suite_table
    from .results.store import ResultStore

    try:
        loaded = load_suite(suite)
        with ResultStore(results, read_only=True) as store:
            frame = store.frame(loaded.name)
        missing = missing_cells(loaded, frame)
        if missing:
            err.print(f"error: {missing} of the suite's cells have no stored result; run "
                      f"`rbv evaluate {suite}` first so the baseline is complete")
            raise typer.Exit(2)
        path = save_baseline(loaded, suite_table(loaded, frame), baselines)
    except RbvError as exc:
        raise fail(exc) from None
    out.print(f"baseline of {loaded.name} (version {loaded.version}) written to {path}",
              highlight=False, markup=False)


@app.command("ls")
def list_components(kind: Annotated[str, typer.Argument(help="|".join(KINDS))]) -> None:
    """List registered components with one-line descriptions (and parameters)."""
    from importlib import import_module

    from .core.params import describe_fields
    from .core.plugins import load_plugins
    from .core.registry import REGISTRIES

    load_plugins()
    if kind == "families":
        import_module("robustbench_vit.models.adapters")  # registers the built-in adapters
    if kind not in REGISTRIES:
        err.print(f"error: unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
        raise typer.Exit(2)
    registry = REGISTRIES[kind]
    for name in registry.names():
        line = f"{name:22} {registry.describe(name)}"
        target = registry.get(name)
        if isinstance(target, type) and hasattr(target, "__dataclass_fields__"):
            fields = describe_fields(target)
            line += f"\n{'':22} [{fields}]" if fields else ""
        out.print(line, highlight=False, markup=False)


@app.command()
def train(recipe: Annotated[str, typer.Argument(help="Zoo recipe name (see `rbv ls zoo`).")],
          device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto") -> None:
    """Train a zoo recipe now and cache its checkpoint (no-op when cached)."""
    from .core.plugins import load_plugins
    from .execution.evaluate import resolve_device
    from .models.zoo import ensure_trained, load_metadata

    load_plugins()
    try:
        path = ensure_trained(recipe, resolve_device(device),
                              on_epoch=lambda e, loss: err.print(f"epoch {e + 1}: loss {loss:.4f}"))
    except RbvError as exc:
        raise fail(exc) from None
    meta = load_metadata(recipe) or {}
    out.print(f"{recipe}: {path} (test accuracy {meta.get('test_accuracy', float('nan')):.4f})",
              highlight=False)


@app.command()
def schema() -> None:
    """Print the JSON Schema of suite files (for editors)."""
    from .config.schema import suite_json_schema

    sys.stdout.write(json.dumps(suite_json_schema(), indent=2) + "\n")


WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
"""OS errors that only a write raises: their message says "cannot write"."""


def os_error_line(exc: OSError) -> str:
    """One line naming the path and the cause of an OS error (no space, read-only folder,
    permission denied, a file where a folder should be)."""
    cause = exc.strerror or (str(exc).splitlines() or [type(exc).__name__])[0]
    name = exc.filename if isinstance(exc.filename, (str, bytes)) else None
    if name is None:
        code = errno.errorcode.get(exc.errno or 0)
        return f"{cause} ({code})" if code else cause
    path = Path(os.fsdecode(name))
    if exc.errno in (errno.EEXIST, errno.ENOTDIR):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
        if blocker == path:
            return f"{path} is a file, not a folder"
        if blocker is not None:
            return f"cannot write {path}: {blocker} is a file, not a folder"
    return f"{'cannot write ' if exc.errno in WRITE_ERRNOS else ''}{path}: {cause}"


def main() -> None:
    """Console entry point: an OS error of any command ends with one line and exit 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("robustbench_vit").setLevel(logging.INFO)
    try:
        app()
    except OSError as exc:  # click already handled EPIPE (a closed stdout)
        logging.getLogger(__name__).debug("OS error", exc_info=True)
        err.print(f"[bold red]error:[/] {escape(os_error_line(exc))}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
