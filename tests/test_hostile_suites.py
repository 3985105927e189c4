"""Hostile and careless suites get a located message and exit 2 (or an error row), never a hang,
a leak or a silently different run (issue 17, findings 4, 5 and 7).

- YAML: an alias bomb and an oversized file are refused before anything is built
  (`RBV_YAML_MAX_NODES`, `RBV_SUITE_MAX_BYTES`); includes stay inside the suite's folder (or
  `RBV_INCLUDE_ROOTS`), are YAML mappings with suite keys, and a file that is not a suite is
  refused without quoting it.
- Devices: a device this machine lacks is refused by `rbv validate` / `rbv evaluate` (the suite's
  field or `--device`) before anything runs; in a cell it is an error row, never a traceback.
- Caps: `limits.max_steps` (every attack's `steps` / `n_queries`, parametrized over ATTACKS),
  `limits.max_cells` (counted before expansion); an L∞ eps above 1 or an infinite eps is a
  validation error, an L2 eps above the images' diameter fails the cell; `n_examples` above the
  data set's size fails the cell naming both numbers.
"""

from __future__ import annotations

import dataclasses
import os
import re
import resource
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest
import torch
from tiny_suite import TINY_SUITE

from robustbench_vit import SuiteError, load_suite
from robustbench_vit.config.spec import parse_suite
from robustbench_vit.core.errors import RbvError
from robustbench_vit.core.params import validate_params
from robustbench_vit.core.plugins import load_plugins
from robustbench_vit.core.registry import ATTACKS
from robustbench_vit.execution.evaluate import evaluate_cell

load_plugins()

ABSENT_GPU = f"cuda:{torch.cuda.device_count() + 7}"
"""A CUDA device no machine running these tests has."""
ITERATION_FIELDS = ("steps", "n_queries")
"""Fields capped by `limits.max_steps` (robustbench_vit.config.caps.ITERATION_FIELDS)."""
ATTACK_LINE = "  - {kind: attack, name: pgd, steps: 2, sweep: {eps: [1/255, 8/255]}}"


def run_rbv(rbv_bin: str, *args: str, cwd: Path, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The console script, with 4 GiB of data memory at most (an expansion that is not refused
    must not take the machine down) and a timeout (a hang fails the test)."""

    def cap_memory() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (4 << 30, 4 << 30))

    return subprocess.run([rbv_bin, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, preexec_fn=cap_memory, env={**os.environ, **(env or {})})


def write(folder: Path, text: str, name: str = "suite.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def problems(path: Path) -> list[tuple[str, str]]:
    """The (field path, message) problems of the suite at `path` (it must not validate)."""
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    return info.value.problems


def with_scenario(line: str, text: str = TINY_SUITE) -> str:
    assert ATTACK_LINE in text
    return text.replace(ATTACK_LINE, line)


# --- finding 4: YAML ---------------------------------------------------------------------------

def bomb_suite(levels: int = 10, width: int = 10) -> str:
    """The tiny suite with model kwargs that expand to about width**levels nodes: anchors nested
    `levels` deep, each a list of `width` aliases of the one before ("billion laughs")."""
    items = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    items += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    kwargs = "kwargs: {img_size: 32,"
    assert kwargs in TINY_SUITE
    return TINY_SUITE.replace(kwargs, f"kwargs: {{{', '.join(items)}, img_size: 32,")


def test_an_alias_bomb_is_refused_at_once_with_the_setting_to_raise(
        rbv_bin: str, tmp_path: Path) -> None:
    text = bomb_suite()
    path = write(tmp_path, text)
    assert len(text) < 2048
    proc = run_rbv(rbv_bin, "validate", str(path), cwd=tmp_path, timeout=60)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert str(path) in proc.stderr and "RBV_YAML_MAX_NODES" in proc.stderr


def test_alias_expansion_is_counted_before_anything_is_built(tmp_path: Path) -> None:
    """Stage one only (reading the YAML): where code that does not count would still be safe,
    as nothing walks the expansion there."""
    path = write(tmp_path, bomb_suite())
    start = time.perf_counter()
    with pytest.raises(SuiteError) as info:
        parse_suite(path)
    assert time.perf_counter() - start < 1.0
    (where, message), = info.value.problems
    assert where == "models[0].kwargs.a9"  # where the expansion is written
    assert re.search(r"expands to [\d,]{14,} YAML nodes", message), message  # over 10**10
    assert "limit of 100,000" in message and "RBV_YAML_MAX_NODES" in message


def test_the_node_limit_can_be_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, bomb_suite(levels=3))  # about 1,100 nodes in the kwargs
    monkeypatch.setenv("RBV_YAML_MAX_NODES", "1000")
    assert "RBV_YAML_MAX_NODES" in problems(path)[0][1]
    monkeypatch.setenv("RBV_YAML_MAX_NODES", "2000")
    assert load_suite(path).models[0].kwargs["a2"][0][0] == ["lol"] * 10


def test_a_recursive_alias_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, TINY_SUITE.replace("kwargs: {", "kwargs: {loop: &a [*a], "))
    (where, message), = problems(path)
    assert "recursive" in message


def test_a_suite_over_the_size_limit_is_refused_before_parsing(
        rbv_bin: str, tmp_path: Path) -> None:
    padding = "# padding\n" * (1 << 17)  # 1.25 MiB of comments: a valid suite, only too big
    path = write(tmp_path, TINY_SUITE + padding)
    proc = run_rbv(rbv_bin, "validate", str(path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert str(path) in proc.stderr and "1,048,576 bytes" in proc.stderr
    assert "RBV_SUITE_MAX_BYTES" in proc.stderr and "Traceback" not in proc.stderr
    raised = run_rbv(rbv_bin, "validate", str(path), cwd=tmp_path,
                     env={"RBV_SUITE_MAX_BYTES": str(4 << 20)})
    assert raised.returncode == 0, raised.stderr[-2000:]


def test_a_large_file_is_not_parsed(tmp_path: Path) -> None:
    path = write(tmp_path, "- 1\n" * (1 << 20))  # 4 MiB: a minute for PyYAML to parse
    start = time.perf_counter()
    (where, message), = problems(path)
    assert time.perf_counter() - start < 1.0
    assert "4,194,304 bytes" in message and "RBV_SUITE_MAX_BYTES" in message


SECRET = "api_token: hunter2\nowner: somebody\n"


def test_an_include_outside_the_suite_folder_is_refused(tmp_path: Path) -> None:
    secret = write(tmp_path / "elsewhere", SECRET, "secret.yaml")
    for name in (str(secret), "../elsewhere/secret.yaml"):
        path = write(tmp_path / "suites", f"include: {name}\n" + TINY_SUITE)
        (where, message), = problems(path)
        assert where == "include" and "outside the suite's folder" in message
        assert "RBV_INCLUDE_ROOTS" in message
        assert "hunter2" not in message and "api_token" not in message


def test_a_symlink_out_of_the_suite_folder_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "elsewhere", "seed: 3\n", "defaults.yaml")
    (tmp_path / "suites").mkdir()
    (tmp_path / "suites" / "defaults.yaml").symlink_to(tmp_path / "elsewhere" / "defaults.yaml")
    path = write(tmp_path / "suites", "include: defaults.yaml\n" + TINY_SUITE)
    (where, message), = problems(path)
    assert where == "include" and "outside the suite's folder" in message


def test_an_allowed_root_admits_shared_defaults(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    shared = write(tmp_path / "shared", "seed: 3\nversion: 7\n", "defaults.yaml")
    path = write(tmp_path / "suites", f"include: {shared}\n" + TINY_SUITE)
    monkeypatch.setenv("RBV_INCLUDE_ROOTS", str(tmp_path / "shared"))
    suite = load_suite(path)
    assert (suite.seed, suite.version) == (3, 7)


def test_an_included_file_that_is_not_a_suite_is_not_quoted(tmp_path: Path) -> None:
    write(tmp_path, SECRET, "notes.yaml")
    path = write(tmp_path, "include: notes.yaml\n" + TINY_SUITE)
    (where, message), = problems(path)
    assert "not a suite file" in message
    assert "hunter2" not in message and "api_token" not in message and "owner" not in message


def test_an_include_must_be_a_yaml_file(tmp_path: Path) -> None:
    write(tmp_path, "seed: 3\n", "defaults.txt")
    path = write(tmp_path, "include: [defaults.txt]\n" + TINY_SUITE)
    assert problems(path) == [("include[0]", "'defaults.txt' is not a .yaml or .yml file")]


def test_an_include_must_be_a_mapping(tmp_path: Path) -> None:
    write(tmp_path, "- seed\n- 3\n", "defaults.yaml")
    path = write(tmp_path, "include: defaults.yaml\n" + TINY_SUITE)
    (where, message), = problems(path)
    assert "expected a mapping at the top, got list" in message


def test_a_diamond_of_includes_reads_each_file_once(tmp_path: Path) -> None:
    """22 levels of `include: [next, next]`: 4 million reads before, 22 now."""
    levels = 22
    for i in range(levels):
        body = f"include: [d{i + 1}.yaml, d{i + 1}.yaml]\n" if i + 1 < levels else ""
        write(tmp_path, body + f"version: {i}\n", f"d{i}.yaml")
    path = write(tmp_path, "include: d0.yaml\n" + TINY_SUITE.replace("suite: tiny\n",
                                                                     "suite: tiny\nversion: 1\n"))
    code = ("import sys; from pathlib import Path; from robustbench_vit.config.reader import "
            f"read_yaml; print(read_yaml(Path({str(path)!r}))['version'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 0 and proc.stdout.strip() == "1", proc.stderr[-2000:]


# --- finding 5: devices ------------------------------------------------------------------------

def test_validate_refuses_a_device_this_machine_lacks(rbv_bin: str, tmp_path: Path) -> None:
    path = write(tmp_path, TINY_SUITE.replace("device: cpu", f"device: {ABSENT_GPU}"))
    proc = run_rbv(rbv_bin, "validate", str(path), cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr[-2000:]
    assert f"{path}: device: {ABSENT_GPU}" in proc.stderr.replace("\n", " ")
    assert "CUDA device" in proc.stderr and "Traceback" not in proc.stderr


def test_evaluate_refuses_a_device_option_this_machine_lacks(
        rbv_bin: str, tmp_path: Path) -> None:
    path = write(tmp_path, TINY_SUITE)
    results = tmp_path / "results"
    proc = run_rbv(rbv_bin, "evaluate", str(path), "--results", str(results), "--quiet",
                   "--device", ABSENT_GPU, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"--device {ABSENT_GPU}" in proc.stderr and "CUDA device" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (results / "rbv.sqlite").exists()  # nothing ran


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_says_so(tmp_path: Path) -> None:
    from robustbench_vit.config.devices import check_device

    suite = load_suite(write(tmp_path, TINY_SUITE.replace("device: cpu", "device: cuda")))
    with pytest.raises(SuiteError) as info:
        check_device(suite)
    assert info.value.problems == [("device", "cuda is not available (no CUDA device)")]
    with pytest.raises(RbvError, match=r"^--device cuda:0 is not available") as raised:
        check_device(suite, "cuda:0")
    assert raised.value.exit_code == 2


def test_a_cell_on_a_missing_device_is_an_error_row(tmp_path: Path) -> None:
    cell = load_suite(write(tmp_path, TINY_SUITE)).cells(ABSENT_GPU)[0]
    result = evaluate_cell(cell)
    assert result.status == "error"
    assert f"device {ABSENT_GPU}" in (result.error or "") and result.device == ABSENT_GPU


def test_preparing_an_untrained_zoo_model_on_a_missing_device_is_a_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from robustbench_vit.execution.run import prepare

    monkeypatch.setenv("RBV_CACHE", str(tmp_path / "cache"))  # nothing trained
    models = TINY_SUITE[TINY_SUITE.index("models:"):TINY_SUITE.index("scenarios:")]
    text = TINY_SUITE.replace(models, "models:\n  - {name: vit, source: 'zoo:digits_vit'}\n")
    cells = load_suite(write(tmp_path, text)).cells(ABSENT_GPU)
    with pytest.raises(RbvError, match=f"device {ABSENT_GPU}") as raised:
        prepare(cells)  # a message (exit 2), not a traceback from training on it
    assert raised.value.exit_code == 2


# --- finding 7: caps -----------------------------------------------------------------------------

def capped_fields(name: str) -> list[str]:
    fields = {f.name for f in dataclasses.fields(ATTACKS.get(name)) if f.init}
    return [f for f in ITERATION_FIELDS if f in fields]


ITERATION_CASES = [pytest.param(name, field, id=f"{name}-{field}") for name in ATTACKS.names()
                   for field in capped_fields(name)]


@pytest.mark.parametrize(("name", "field"), ITERATION_CASES)
def test_every_attack_iteration_count_is_capped(name: str, field: str, tmp_path: Path) -> None:
    line = f"  - {{kind: attack, name: {name}, {field}: 1000000000}}"
    path = write(tmp_path, with_scenario(line))
    (where, message), = problems(path)
    assert where == f"scenarios[1].{field}"
    assert "1,000,000,000 is over limits.max_steps = 10,000" in message
    raised = write(tmp_path, with_scenario(line) + "limits: {max_steps: 1000000000}\n", "ok.yaml")
    assert load_suite(raised).scenarios[1].points[0][field] == 10**9


def test_a_capped_sweep_value_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, with_scenario(
        "  - {kind: attack, name: pgd, sweep: {steps: [2, 1000000000]}}"))
    (where, message), = problems(path)
    assert where == "scenarios[1].sweep.steps[1]" and "limits.max_steps" in message


def test_a_million_cells_are_refused_before_expanding(tmp_path: Path) -> None:
    values = ", ".join(str(i) for i in range(1, 1001))
    path = write(tmp_path, with_scenario(
        f"  - {{kind: attack, name: pgd, sweep: {{steps: [{values}], alpha: [{values}]}}}}"))
    start = time.perf_counter()
    (where, message), = problems(path)
    assert time.perf_counter() - start < 2.0  # 84 s to expand and validate them before
    assert where == "scenarios[1].sweep"
    assert "1,000,001 cells" in message and "limits.max_cells = 10,000" in message
    assert "max_cells: N" in message


def test_the_cell_cap_can_be_lowered_and_raised(tmp_path: Path) -> None:
    path = write(tmp_path, TINY_SUITE + "limits: {max_cells: 2}\n")
    (where, message), = problems(path)
    assert "3 cells" in message and "limits.max_cells = 2" in message
    assert len(load_suite(write(tmp_path, TINY_SUITE + "limits: {max_cells: 3}\n",
                                "ok.yaml")).cells()) == 3


def norms(name: str) -> list[str]:
    cls = ATTACKS.get(name)
    if "norm" in {f.name for f in dataclasses.fields(cls)}:
        return list(typing.get_args(typing.get_type_hints(cls)["norm"]))
    attack = validate_params(cls, {})
    threat = attack.threat_model()
    return [threat[0]] if threat else []


EPS_CASES = [pytest.param(name, norm, id=f"{name}-{norm}") for name in ATTACKS.names()
             for norm in norms(name)]


@pytest.mark.parametrize(("name", "norm"), EPS_CASES)
def test_every_attack_refuses_an_absurd_eps(name: str, norm: str, tmp_path: Path) -> None:
    has_norm = "norm" in {f.name for f in dataclasses.fields(ATTACKS.get(name))}
    extra = f"norm: {norm}, " if has_norm else ""
    eps = "1e9" if norm == "Linf" else ".inf"
    path = write(tmp_path, with_scenario(f"  - {{kind: attack, name: {name}, {extra}eps: {eps}}}"))
    (where, message), = problems(path)
    assert where == "scenarios[1].eps", message


def test_an_absurd_eps_in_a_sweep_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, with_scenario("  - {kind: attack, name: pgd, sweep: {eps: [1/255, 2]}}"))
    (where, message), = problems(path)
    assert where == "scenarios[1].sweep.eps[1]" and "above 1, the whole pixel range" in message


def test_an_l2_eps_above_the_image_diameter_fails_the_cell(tmp_path: Path) -> None:
    line = "  - {kind: attack, name: pgd, norm: L2, eps: 1000000, steps: 2}"
    cell = load_suite(write(tmp_path, with_scenario(line))).cells()[1]
    result = evaluate_cell(cell)
    assert result.status == "error"
    assert "L2 eps of 1e+06 is above 55.43, the diameter of images of 3072 values" in \
        (result.error or "")


def test_n_examples_above_the_data_set_fails_the_cell(tmp_path: Path) -> None:
    text = TINY_SUITE.replace("batch_size: 16}", "batch_size: 16, n_examples: 64}")
    cell = load_suite(write(tmp_path, text)).cells()[0]
    result = evaluate_cell(cell)
    assert result.status == "error"
    assert "data.n_examples is 64, but the synthetic data set has only 32 images" in \
        (result.error or "")
