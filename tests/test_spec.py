"""Suite validation: every bad suite names its file, the field path and what was expected (exit 2).

The table of bad suites is checked three ways: through `load_suite` (SuiteError.problems), through
the `rbv validate` command in-process, and through the installed console script in a subprocess
(two representative cases by default, the whole table under the `slow` marker: each subprocess
pays the torch import).
"""

from __future__ import annotations

import itertools
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from robustbench_vit import SuiteError, load_suite
from robustbench_vit.cli import app
from robustbench_vit.core.params import parse_fraction

REPO = Path(__file__).resolve().parents[1]

BASE = """\
suite: t
version: 1
seed: 0
data: {dataset: synthetic, size: 32, image_size: 32, batch_size: 16}
models:
  - name: m
    source: timm:vit_tiny_patch16_224
    kwargs: {img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2, num_classes: 10}
scenarios:
  - {kind: clean}
  - {kind: attack, name: pgd, steps: 2, sweep: {eps: [1/255, 2/255]}}
"""


def edit(old: str, new: str, text: str = BASE) -> str:
    """`text` with `old` replaced by `new` (which must be there: a typo here is a test bug)."""
    assert old in text, old
    return text.replace(old, new)


def with_scenario(line: str, text: str = BASE) -> str:
    """`text` with its attack scenario replaced by `line` (so it is `scenarios[1]`)."""
    return edit("  - {kind: attack, name: pgd, steps: 2, sweep: {eps: [1/255, 2/255]}}", line, text)


def with_models(text: str) -> str:
    """BASE with its `models:` section replaced by `text`."""
    return BASE[:BASE.index("models:")] + text + "\n" + BASE[BASE.index("scenarios:"):]


def with_model(line: str) -> str:
    """BASE with its one model replaced by the flow mapping `line` (`models[0]`)."""
    return with_models("models:\n" + line)


@dataclass(frozen=True)
class Bad:
    """A bad suite and where its problem must be reported."""

    id: str
    text: str | None  # suite.yaml; None: the file does not exist
    field: str  # expected field path; "" is the whole file (printed as <root>)
    expect: str  # a fragment of the message saying what was expected
    files: tuple[tuple[str, str], ...] = ()  # other files written beside suite.yaml
    reported: str = "suite.yaml"  # the file the problem is reported against


GATE = "gates:\n  - {model: m, scenario: clean, metric: accuracy, min: 0.5}\n"
BAD = [
    Bad("unknown-top-key", BASE + "colour: red\n", "colour", "unknown key 'colour'"),
    Bad("unknown-attack", with_scenario("  - {kind: attack, name: pgdd}"),
        "scenarios[1].name", "did you mean 'pgd'"),
    Bad("wrong-type-steps", with_scenario("  - {kind: attack, name: pgd, steps: many}"),
        "scenarios[1].steps", "valid integer"),
    Bad("negative-eps", with_scenario("  - {kind: attack, name: pgd, eps: -0.1}"),
        "scenarios[1].eps", "greater than or equal to 0"),
    Bad("negative-eps-in-sweep",
        with_scenario("  - {kind: attack, name: pgd, sweep: {eps: [1/255, 2/255, -1/255]}}"),
        "scenarios[1].sweep.eps[2]", "greater than or equal to 0"),
    Bad("empty-models", with_models("models: []"), "models", "at least 1 item"),
    Bad("duplicate-model-names",
        edit("scenarios:", "  - {name: m, source: 'zoo:digits_vit'}\nscenarios:"),
        "models", "duplicate model name 'm'"),
    Bad("missing-file", None, "", "file not found"),
    Bad("yaml-syntax-error", edit("seed: 0", "seed: 0: 1"), "",
        "YAML syntax error: line 3, column 8"),
    Bad("yaml-syntax-error-in-include", "include: defaults.yaml\n" + BASE, "",
        "YAML syntax error", files=(("defaults.yaml", "seed: [1\n"),), reported="defaults.yaml"),
    Bad("top-level-not-a-mapping", "- suite: t\n- models: []\n", "",
        "expected a mapping at the top"),
    Bad("duplicate-yaml-key", BASE + "seed: 3\n", "seed", "duplicate key 'seed' (lines 3 and 12)"),
    Bad("fraction-divides-by-zero", with_scenario("  - {kind: attack, name: pgd, eps: 8/0}"),
        "scenarios[1].eps", "divides by zero"),
    Bad("fraction-in-sweep-divides-by-zero",
        with_scenario("  - {kind: attack, name: pgd, sweep: {eps: [1/255, 1/0]}}"),
        "scenarios[1].sweep.eps[1]", "divides by zero"),
    Bad("bad-fraction-text", with_scenario("  - {kind: attack, name: pgd, eps: 8/two}"),
        "scenarios[1].eps", "valid number"),
    Bad("fraction-for-an-int", with_scenario("  - {kind: attack, name: pgd, steps: 10/2}"),
        "scenarios[1].steps", "valid integer"),
    Bad("unknown-dataset", edit("dataset: synthetic, size: 32, ", "dataset: digitz, "),
        "data.dataset", "did you mean 'digits'"),
    Bad("unknown-dataset-field", edit("size: 32", "sise: 32"), "data.sise", "did you mean 'size'"),
    Bad("bad-dataset-value", edit("dataset: synthetic, size: 32", "dataset: digits, split: val"),
        "data.split", "'train', 'test' or 'all'"),
    Bad("wrong-type-n-examples", edit("batch_size: 16", "batch_size: 16, n_examples: lots"),
        "data.n_examples", "valid integer"),
    Bad("negative-batch-size", edit("batch_size: 16", "batch_size: -4"),
        "data.batch_size", "greater than 0"),
    Bad("unknown-scenario-kind", edit("{kind: clean}", "{kind: cleen}"),
        "scenarios[0].kind", "did you mean 'clean'"),
    Bad("unknown-key-in-attack", with_scenario("  - {kind: attack, name: pgd, stepz: 3}"),
        "scenarios[1].stepz", "did you mean 'steps'"),
    Bad("unknown-key-in-clean", edit("{kind: clean}", "{kind: clean, eps: 3}"),
        "scenarios[0].eps", "unknown key 'eps' (allowed: kind, sweep, ece_bins)"),
    Bad("sweep-over-unknown-key",
        with_scenario("  - {kind: attack, name: pgd, sweep: {epz: [1/255]}}"),
        "scenarios[1].sweep.epz", "unknown key 'epz'; did you mean 'eps'"),
    Bad("sweep-not-a-list", with_scenario("  - {kind: attack, name: pgd, sweep: {eps: 0.1}}"),
        "scenarios[1].sweep.eps", "valid list"),
    Bad("attack-without-name", with_scenario("  - {kind: attack, eps: 0.1}"),
        "scenarios[1]", "needs `name:`"),
    Bad("attack-name-not-a-string", with_scenario("  - {kind: attack, name: [pgd]}"),
        "scenarios[1].name", "expected an attack name"),
    Bad("attack-bad-choice", with_scenario("  - {kind: attack, name: pgd, norm: L3}"),
        "scenarios[1].norm", "'Linf' or 'L2'"),
    Bad("unknown-defense", edit("    kwargs:", "    defenses: [none, nonee]\n    kwargs:"),
        "models[0].defenses[1]", "unknown defense 'nonee'; did you mean 'none'"),
    Bad("unknown-defense-key",
        edit("    kwargs:", "    defenses: [{name: none, sigma: 1}]\n    kwargs:"),
        "models[0].defenses[0].sigma", "unknown key 'sigma'"),
    Bad("unknown-model-key", edit("    kwargs:", "    wieghts: x\n    kwargs:"),
        "models[0].wieghts", "unknown key 'wieghts'"),
    Bad("unknown-zoo-recipe", with_model("  - {name: m, source: 'zoo:digits_vt'}"),
        "models[0].source", "did you mean 'digits_vit'"),
    Bad("unknown-timm-arch", with_model("  - {name: m, source: 'timm:vit_tiny_patch16_22'}"),
        "models[0].source", "did you mean vit_tiny_patch16_224"),
    Bad("unknown-source-prefix", with_model("  - {name: m, source: 'hub:org/vit'}"),
        "models[0].source", "expected zoo:<recipe>, timm:<architecture> or file:<path>"),
    Bad("file-source-missing",
        with_model("  - {name: m, source: 'file:nothere.safetensors', arch: vit_tiny_patch16_224}"),
        "models[0].source", "checkpoint not found"),
    Bad("file-source-without-arch", with_model("  - {name: m, source: 'file:weights.pt'}"),
        "models[0].arch", "needs `arch:`", files=(("weights.pt", "not really weights"),)),
    Bad("include-missing", "include: defaults.yaml\n" + BASE, "include", "file not found"),
    Bad("include-cycle", "include: a.yaml\n" + BASE, "include",
        "include cycle: suite.yaml -> a.yaml -> suite.yaml",
        files=(("a.yaml", "include: suite.yaml\n"),)),
    Bad("gate-unknown-metric", BASE + GATE.replace("metric: accuracy", "metric: acuracy"),
        "gates[0].metric", "did you mean 'accuracy'"),
    Bad("gate-without-bounds", BASE + GATE.replace(", min: 0.5", ""),
        "gates[0]", "needs `min:`, `max:`, `baseline: true`, `no_flags: true`, `better_than:` or "
        "`exceeds:`"),
    Bad("gate-min-above-max", BASE + GATE.replace("min: 0.5", "min: 0.5, max: 0.4"),
        "gates[0]", "min 0.5 is above max 0.4"),
    Bad("gate-expect-fail-without-reason",
        BASE + GATE.replace("min: 0.5", "min: 0.5, expect: fail"),
        "gates[0]", "`expect: fail` needs a `reason:`"),
    Bad("gate-reason-without-expect",
        BASE + GATE.replace("min: 0.5", "min: 0.5, reason: why"),
        "gates[0]", "`reason:` is only for gates with `expect: fail`"),
    Bad("gate-compare-unknown-model",
        BASE + GATE.replace("min: 0.5", "exceeds: {model: nosuch}"),
        "gates[0].exceeds.model", "no model of this suite is named 'nosuch'"),
    Bad("gate-compare-nothing", BASE + GATE.replace("min: 0.5", "better_than: {by: 0.1}"),
        "gates[0].better_than", "needs a model, a defense and/or params"),
    Bad("gate-mapping-unknown-key", BASE + "gates: {evaluate: true, checks: "
        "[{model: m, scenario: clean, metric: accuracy, mni: 0.5}]}\n",
        "gates.checks[0].mni", "did you mean 'min'"),
    Bad("gate-list-unknown-key", BASE + GATE.replace("min: 0.5", "mni: 0.5"),
        "gates[0].mni", "did you mean 'min'"),
    Bad("gates-unknown-option", BASE + "gates: {evalute: true, checks: []}\n",
        "gates.evalute", "did you mean 'evaluate'"),
    Bad("gate-unknown-model", BASE + GATE.replace("model: m", "model: vit"),
        "gates[0].model", "no model of this suite matches 'vit'"),
    Bad("bad-device", BASE + "device: gpu\n", "device", "expected auto, cpu, cuda, cuda:N or mps"),
    Bad("bad-suite-name", edit("suite: t", "suite: my suite"), "suite", "a name of letters"),
    Bad("missing-suite-name", edit("suite: t\n", ""), "suite", "required field is missing"),
]
CONSOLE_CASES = {"yaml-syntax-error", "duplicate-model-names"}
"""Cases also run through the console script by default (the rest only under -m slow)."""


Files = tuple[tuple[str, str], ...]


def write_suite(folder: Path, text: str | None, files: Files = ()) -> Path:
    """Write suite.yaml (unless `text` is None) and `files` into `folder`; the suite path."""
    folder = folder.resolve()
    for name, content in files:
        (folder / name).write_text(content)
    path = folder / "suite.yaml"
    if text is not None:
        path.write_text(text)
    return path


def write_case(case: Bad, folder: Path) -> Path:
    """Write a bad case's files into `folder`; returns the suite path."""
    return write_suite(folder, case.text, case.files)


def assert_reported(stderr: str, case: Bad, folder: Path) -> None:
    """One stderr line names the reported file and the field path, and says what was expected."""
    assert "Traceback" not in stderr
    prefix = f"{folder.resolve() / case.reported}: {case.field or '<root>'}: "
    lines = [line for line in stderr.splitlines() if prefix in line]
    assert lines, f"no line starts with {prefix!r} in:\n{stderr}"
    assert any(case.expect in line for line in lines), stderr


def test_bad_suites_cover_enough_kinds() -> None:
    assert len({case.id for case in BAD}) == len(BAD) >= 18


def test_base_suite_is_valid(tmp_path: Path) -> None:
    suite = load_suite(write_suite(tmp_path, BASE))
    assert [m.name for m in suite.models] == ["m"]
    assert len(suite.cells()) == 3


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.id)
def test_bad_suite_raises_suite_error(case: Bad, tmp_path: Path) -> None:
    path = write_case(case, tmp_path)
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    exc = info.value
    assert exc.file == str(tmp_path.resolve() / case.reported)
    assert exc.exit_code == 2
    messages = [msg for field, msg in exc.problems if field == case.field]
    assert messages, f"no problem at {case.field!r}: {exc.problems}"
    assert any(case.expect in msg for msg in messages), exc.problems


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.id)
def test_bad_suite_validate_command_exits_2(case: Bad, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(write_case(case, tmp_path))])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not an uncaught error
    assert_reported(result.stderr, case, tmp_path)
    assert result.stdout == ""


@pytest.mark.parametrize("case", [
    pytest.param(case, id=case.id, marks=() if case.id in CONSOLE_CASES else pytest.mark.slow)
    for case in BAD
])
def test_bad_suite_console_script_exits_2(case: Bad, tmp_path: Path, rbv_bin: str) -> None:
    path = write_case(case, tmp_path)
    proc = subprocess.run([rbv_bin, "validate", str(path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert_reported(proc.stderr, case, tmp_path)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = edit("dataset: synthetic, size: 32, ", "dataset: digitz, ")
    text = edit("name: pgd,", "name: pgdd,", text) + GATE.replace("accuracy", "acuracy")
    with pytest.raises(SuiteError) as info:
        load_suite(write_suite(tmp_path, text))
    fields = [field for field, _ in info.value.problems]
    assert fields == ["data.dataset", "scenarios[1].name", "gates[0].metric"]


def test_file_name_with_brackets_is_printed_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "[draft] suite.yaml"
    path.write_text(BASE + "colour: red\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert f"{path}: colour: unknown key 'colour'" in result.stderr


def test_validate_reports_a_valid_suite(tmp_path: Path) -> None:
    path = write_suite(tmp_path, BASE)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert f"{path}: valid — 1 models, 2 scenarios, 3 cells" in result.stdout


# --- fractions --------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [
    ("8/255", 8 / 255), (" 1 / 2 ", 0.5), ("-3/4", -0.75), ("1.5/3", 0.5), ("1e-2/2", 0.005),
])
def test_parse_fraction(text: str, value: float) -> None:
    assert parse_fraction(text) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("value", ["8/two", "8/255/2", "pgd", 0.25, 3, None])
def test_parse_fraction_leaves_other_values_to_pydantic(value: object) -> None:
    assert parse_fraction(value) == value


def test_fractions_parse_wherever_a_float_is_expected(tmp_path: Path) -> None:
    text = edit("dataset: synthetic, size: 32", "dataset: digits, test_fraction: 1/4")
    text = with_scenario("  - {kind: attack, name: pgd, eps: 8/255, alpha: 1 / 255}\n"
                         "  - {kind: attack, name: fgsm, sweep: {eps: [1/255, 0.5, 2/255]}}", text)
    text += GATE.replace("min: 0.5", "min: 9/10, max: 1/1")
    suite = load_suite(write_suite(tmp_path, text))
    assert suite.data.params["test_fraction"] == 0.25
    pgd = suite.scenarios[1].points[0]
    assert (pgd["eps"], pgd["alpha"]) == (8 / 255, 1 / 255)
    assert [p["eps"] for p in suite.scenarios[2].points] == [1 / 255, 0.5, 2 / 255]
    assert all(isinstance(p["eps"], float) for p in suite.scenarios[2].points)
    assert (suite.gates.checks[0].min, suite.gates.checks[0].max) == (0.9, 1.0)


# --- include: ---------------------------------------------------------------------------------

DEFAULTS = """\
version: 4
seed: 7
data: {dataset: synthetic, size: 32, image_size: 32, batch_size: 16}
scenarios:
  - {kind: clean}
  - {kind: attack, name: fgsm, eps: 1/255}
"""


def test_include_deep_merges_defaults_under_the_suite(tmp_path: Path) -> None:
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "defaults.yaml").write_text(DEFAULTS)
    model = BASE[BASE.index("models:"):BASE.index("scenarios:")]
    text = ("include: common/defaults.yaml\nsuite: child\nseed: 1\n"
            "data: {batch_size: 8}\n" + model + "scenarios:\n  - {kind: clean, ece_bins: 5}\n")
    suite = load_suite(write_suite(tmp_path, text))
    assert (suite.name, suite.version, suite.seed) == ("child", 4, 1)
    assert suite.data.dataset == "synthetic"  # kept from the defaults
    assert suite.data.params["size"] == 32  # mappings merge key by key
    assert suite.data.batch_size == 8  # the suite wins
    assert [s.points for s in suite.scenarios] == [({"ece_bins": 5},)]  # lists are replaced


def test_later_include_overrides_earlier(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("seed: 1\nversion: 2\n")
    (tmp_path / "b.yaml").write_text("seed: 2\n")
    text = "include: [a.yaml, b.yaml]\n" + edit("seed: 0\n", "")
    suite = load_suite(write_suite(tmp_path, text))
    assert (suite.seed, suite.version) == (2, 1)


# --- sweep and cell keys ----------------------------------------------------------------------


def test_sweep_expands_to_the_cartesian_product(tmp_path: Path) -> None:
    text = with_scenario(
        "  - {kind: attack, name: pgd, norm: L2, sweep: {eps: [1/4, 1/2], steps: [1, 2, 3]}}")
    suite = load_suite(write_suite(tmp_path, text))
    points = suite.scenarios[1].points
    expected = itertools.product([0.25, 0.5], [1, 2, 3])
    assert [(p["eps"], p["steps"]) for p in points] == list(expected)
    assert all(p["name"] == "pgd" and p["norm"] == "L2" for p in points)
    cells = suite.cells()
    assert len(cells) == 1 + 6
    assert len({c.key for c in cells}) == len(cells)
    assert {c.scenario_label for c in cells} == {"clean", "attack:pgd"}


def keys(text: str, folder: Path) -> list[str]:
    """The cell keys of the suite `text`, loaded from a file in `folder`."""
    folder.mkdir(exist_ok=True)
    return [c.key for c in load_suite(write_suite(folder, text)).cells()]


def test_cell_keys_are_stable_across_loads(tmp_path: Path) -> None:
    first = keys(BASE, tmp_path / "one")
    assert first == keys(BASE, tmp_path / "one") == keys(BASE, tmp_path / "two")
    assert all(len(k) == 32 for k in first)


@pytest.mark.parametrize(("old", "new", "changed"), [
    ("steps: 2", "steps: 3", [False, True, True]),
    ("[1/255, 2/255]", "[1/255, 3/255]", [False, False, True]),
    ("version: 1", "version: 2", [True, True, True]),
    ("seed: 0", "seed: 1", [True, True, True]),
    ("size: 32", "size: 48", [True, True, True]),
    ("embed_dim: 32", "embed_dim: 64", [True, True, True]),
    ("name: m", "name: renamed", [False, False, False]),
])
def test_cell_key_changes_exactly_with_what_sets_the_numbers(
    old: str, new: str, changed: list[bool], tmp_path: Path
) -> None:
    before, after = keys(BASE, tmp_path / "a"), keys(edit(old, new), tmp_path / "b")
    assert [b != a for b, a in zip(before, after, strict=True)] == changed


def test_cell_key_ignores_the_device(tmp_path: Path) -> None:
    suite = load_suite(write_suite(tmp_path, BASE))
    assert [c.key for c in suite.cells("cpu")] == [c.key for c in suite.cells("cuda:1")]


# --- JSON Schema ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema() -> dict:
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def scenario_entry(schema: dict, kind: str, name: str | None = None) -> dict:
    """The scenarios.items.anyOf member for `kind` (and attack `name`)."""
    for entry in schema["properties"]["scenarios"]["items"]["anyOf"]:
        props = entry["properties"]
        if props["kind"] == {"const": kind} and (name is None or props["name"] == {"const": name}):
            return entry
    raise AssertionError(f"no schema for {kind} {name}")


def test_schema_has_one_entry_per_scenario_and_attack(schema: dict) -> None:
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert {"suite", "models", "scenarios"} <= set(schema["required"])
    pgd = scenario_entry(schema, "attack", "pgd")
    assert pgd["additionalProperties"] is False
    assert {"eps", "steps", "norm", "sweep"} <= set(pgd["properties"])
    assert scenario_entry(schema, "clean")["additionalProperties"] is False


def test_schema_accepts_fractions_for_floats(schema: dict) -> None:
    import re

    eps = scenario_entry(schema, "attack", "pgd")["properties"]["eps"]
    patterns = [s["pattern"] for s in eps["anyOf"] if s.get("type") == "string"]
    assert patterns and re.match(patterns[0], "8/255") and not re.match(patterns[0], "8/x")
    assert {"type": "number"}.items() <= eps["anyOf"][0].items()


def test_schema_validates_quickstart(schema: dict) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    import yaml

    suite = yaml.safe_load((REPO / "suites" / "quickstart.yaml").read_text())
    jsonschema.validate(suite, schema)
    suite["scenarios"][1]["stepz"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(suite, schema)
