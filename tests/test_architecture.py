"""The package's shape: imports point down the layers, no import circles, lazy top level.

The layers, lowest first (README "Architecture"): core; models and data; config; results; report;
audit; scenarios; execution; then api, cli and the pytest plugin. A module may import its own
layer and the layers below it, never one above.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "robustbench_vit"

LAYERS = {
    "core": 0, "models": 1, "data": 1, "config": 2, "results": 3, "report": 4, "audit": 5,
    "scenarios": 6, "execution": 7, "api": 8, "cli": 9, "pytest_plugin": 9, "__init__": 9,
}


def module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def imports(path: Path, top_level_only: bool = False) -> Iterator[str]:
    """Absolute names of the robustbench_vit modules (or attributes) `path` imports."""
    module, is_package = module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.startswith("robustbench_vit"):
                yield target
                for alias in node.names:  # `from . import mod` imports a module
                    yield f"{target}.{alias.name}"
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("robustbench_vit"))


def layer_of(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_belongs_to_a_layer() -> None:
    for path in PACKAGE.rglob("*.py"):
        assert layer_of(module_name(path)[0]) in LAYERS, path


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path: Path) -> None:
    own = layer_of(module_name(path)[0])
    upward = sorted({name for name in imports(path)
                     if layer_of(name) in LAYERS and LAYERS[layer_of(name)] > LAYERS[own]})
    assert not upward, f"{own} (layer {LAYERS[own]}) imports from a higher layer: {upward}"


def test_no_import_circle_among_modules() -> None:
    """Module-level imports form no cycle (function-level imports are not circles)."""
    modules = {module_name(p)[0]: p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for target in imports(path, top_level_only=True):
            while target and target not in modules:  # `from x.y import attr` imports x.y
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
        graph[name] = found
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_layer_check_can_fail(tmp_path: Path) -> None:
    """The checker sees an upward import (a core module importing execution)."""
    fake = PACKAGE / "core" / "_layer_probe_tmp.py"
    fake.write_text("from ..execution.run import run_suite\n", encoding="utf-8")
    try:
        assert "robustbench_vit.execution.run" in set(imports(fake))
        with pytest.raises(AssertionError, match="higher layer"):
            test_imports_point_down(fake)
    finally:
        fake.unlink()


def fresh_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


@pytest.mark.parametrize("statement", [
    "import robustbench_vit",
    "import robustbench_vit.pytest_plugin",
    "import robustbench_vit.cli",
    "import robustbench_vit; robustbench_vit.__version__",
])
def test_light_imports_do_not_import_torch(statement: str) -> None:
    proc = fresh_python(f"import sys; {statement}; "
                        "print(sorted(m for m in ('torch', 'attacks', 'defenses', 'pandas') "
                        "if m in sys.modules))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


def test_rbv_help_does_not_import_torch(rbv_bin: str) -> None:
    code = ("import sys, runpy; sys.argv = ['rbv', '--help']\n"
            "try:\n    from robustbench_vit.cli import main; main()\n"
            "except SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')")
    proc = fresh_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("NO-TORCH") and "evaluate" in proc.stdout
    real = subprocess.run([rbv_bin, "--help"], capture_output=True, text=True, timeout=120)
    assert real.returncode == 0 and "evaluate" in real.stdout


def test_lazy_names_resolve_and_unknown_names_fail() -> None:
    import robustbench_vit

    assert robustbench_vit.load_suite.__module__ == "robustbench_vit.config.load"
    assert robustbench_vit.RbvError.__name__ == "RbvError"
    assert set(robustbench_vit.__all__) >= {"load_suite", "evaluate_cell", "run_suite"}
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        robustbench_vit.nope  # noqa: B018


def test_version_comes_from_package_metadata() -> None:
    from importlib.metadata import version

    import robustbench_vit

    assert robustbench_vit.__version__ == version("robustbench_vit")
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert f'version = "{robustbench_vit.__version__}"' in text
    assert "__version__ =" not in (PACKAGE / "core" / "versions.py").read_text(encoding="utf-8")


@pytest.mark.parametrize("path", sorted([*(REPO / "attacks").glob("*.py"),
                                         *(REPO / "defenses").glob("*.py")]),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_first_party_plugins_use_only_the_public_api(path: Path) -> None:
    """attacks/ and defenses/ are plugins like any third party's: robustbench_vit.api only."""
    used = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            used.add(node.module)
        elif isinstance(node, ast.Import):
            used.update(alias.name for alias in node.names)
    internal = sorted(m for m in used
                      if m.startswith("robustbench_vit") and m != "robustbench_vit.api")
    assert not internal, f"{path.name} imports framework internals: {internal}"
