"""Registries and plugins: lookup, lazy entries, did-you-mean, idempotent loading, contracts."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterable, Iterator
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from robustbench_vit import RbvError, SuiteError, load_suite
from robustbench_vit.core import plugins as plugins_module
from robustbench_vit.core.errors import UnknownNameError
from robustbench_vit.core.params import params_model
from robustbench_vit.core.plugins import ENTRY_POINT_GROUP, load_plugins
from robustbench_vit.core.registry import ATTACKS, METRICS, REGISTRIES, Registry

REPO = Path(__file__).resolve().parents[1]
load_plugins()  # the parametrizations below list what the plugins registered
COMPONENTS = [(kind, name) for kind, registry in REGISTRIES.items() for name in registry.names()]
DATACLASS_KINDS = ("attacks", "defenses", "scenarios", "datasets")


class Widget:
    """A widget: the first docstring line.

    More text that `describe` leaves out.
    """


@pytest.fixture()
def widgets() -> Registry[object]:
    return Registry("widget")


# --- the generic Registry ---------------------------------------------------------------------


def test_register_returns_the_object_and_get_finds_it(widgets: Registry[object]) -> None:
    assert widgets.register("plain", Widget) is Widget
    assert widgets.get("plain") is Widget
    assert "plain" in widgets and "other" not in widgets
    assert len(widgets) == 1


def test_register_as_decorator(widgets: Registry[object]) -> None:
    @widgets.register("decorated", description="set at registration")
    class Decorated:
        """Docstring line."""

    assert widgets.get("decorated") is Decorated
    assert widgets.meta("decorated") == {"description": "set at registration"}
    assert widgets.describe("decorated") == "set at registration"  # meta wins over the docstring


def test_names_are_sorted_and_iterable(widgets: Registry[object]) -> None:
    for name in ("b", "c", "a"):
        widgets.register(name, Widget)
    assert widgets.names() == list(widgets) == ["a", "b", "c"]


def test_lazy_entry_is_imported_on_first_get(
    widgets: Registry[object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "rbv_lazy_widget.py").write_text('class Lazy:\n    """Lazy widget."""\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "rbv_lazy_widget", raising=False)
    widgets.register_lazy("lazy", "rbv_lazy_widget:Lazy", stage="late")
    assert "lazy" in widgets
    assert "rbv_lazy_widget" not in sys.modules
    target = widgets.get("lazy")
    assert "rbv_lazy_widget" in sys.modules
    assert target is sys.modules["rbv_lazy_widget"].Lazy
    assert widgets.get("lazy") is target  # resolved once
    assert widgets.meta("lazy") == {"stage": "late"}
    assert widgets.describe("lazy") == "Lazy widget."


def test_duplicate_registration_is_an_error(widgets: Registry[object]) -> None:
    widgets.register("w", Widget)
    widgets.register("w", Widget)  # the same object again: idempotent (module re-imports)
    with pytest.raises(ValueError, match="widget 'w' is already registered"):
        widgets.register("w", object())
    assert widgets.get("w") is Widget


def test_unknown_name_suggests_close_names(widgets: Registry[object]) -> None:
    for name in ("pgd", "fgsm", "square"):
        widgets.register(name, Widget)
    with pytest.raises(UnknownNameError) as info:
        widgets.get("pgdd")
    exc = info.value
    assert exc.suggestions == ["pgd"]
    assert exc.known == ["fgsm", "pgd", "square"]
    assert str(exc) == "unknown widget 'pgdd'; did you mean 'pgd'? (known: fgsm, pgd, square)"
    assert isinstance(exc, KeyError) and isinstance(exc, RbvError) and exc.exit_code == 2


def test_unknown_name_without_close_match(widgets: Registry[object]) -> None:
    widgets.register("pgd", Widget)
    with pytest.raises(UnknownNameError, match=r"^unknown widget 'zzz' \(known: pgd\)$"):
        widgets.get("zzz")
    with pytest.raises(UnknownNameError, match=r"\(known: none\)"):
        Registry("widget").get("pgd")


def test_describe_uses_the_first_docstring_line(widgets: Registry[object]) -> None:
    widgets.register("doc", Widget)
    widgets.register("nodoc", type("NoDoc", (), {"__doc__": None}))
    assert widgets.describe("doc") == "A widget: the first docstring line."
    assert widgets.describe("nodoc") == ""


def test_unregister_removes_the_entry(widgets: Registry[object]) -> None:
    widgets.register("w", Widget)
    widgets.unregister("w")
    widgets.unregister("never-registered")  # no error
    assert "w" not in widgets and len(widgets) == 0
    widgets.register("w", object())  # free again


# --- plugins ----------------------------------------------------------------------------------


def snapshot() -> dict[str, list[str]]:
    return {kind: registry.names() for kind, registry in REGISTRIES.items()}


def test_load_plugins_is_idempotent() -> None:
    before = snapshot()
    first = load_plugins()
    assert load_plugins() == first
    assert snapshot() == before
    assert {"attacks", "defenses", "robustbench_vit.scenarios"} <= set(first)


def test_builtin_plugins_are_declared_as_entry_points() -> None:
    from importlib.metadata import entry_points

    declared = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert declared.get("attacks") == "attacks"
    assert declared.get("defenses") == "defenses"
    assert set(plugins_module.BUILTIN_PLUGINS) == {"attacks", "defenses"}


THIRD_PARTY = '''
from __future__ import annotations

from dataclasses import dataclass

import torch

from robustbench_vit import Attack, register_attack


@dataclass(frozen=True, kw_only=True)
class Brighten(Attack):
    """Brighten: adds eps to every pixel (a third-party test attack)."""

    eps: float = 1 / 255

    def perturb(self, model, x, y, *, seed):
        return (x + self.eps).clamp(0, 1)


def register() -> None:
    register_attack("thirdparty_brighten", Brighten)
'''
PLUGIN_SUITE = """\
suite: plugin
data: {dataset: synthetic, size: 8}
models:
  - {name: m, source: 'timm:vit_tiny_patch16_224'}
scenarios:
  - {kind: attack, name: thirdparty_brighten, eps: 2/255}
"""


@pytest.fixture(params=["rbv_thirdparty", "rbv_thirdparty:register"])
def third_party_plugin(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """A plugin module on sys.path, announced by a (fake) installed entry point; removed after."""
    value: str = request.param
    code = THIRD_PARTY if ":" in value else THIRD_PARTY + "\nregister()\n"
    (tmp_path / "rbv_thirdparty.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "rbv_thirdparty", raising=False)
    monkeypatch.setattr(plugins_module, "_loaded", set(plugins_module._loaded))
    # let load_plugins see the new entry point
    monkeypatch.setattr(plugins_module, "_scanned", False)
    builtin = list(plugins_module.entry_points(group=ENTRY_POINT_GROUP))
    fake = EntryPoint(name="thirdparty", value=value, group=ENTRY_POINT_GROUP)
    monkeypatch.setattr(plugins_module, "entry_points", lambda group: [*builtin, fake])
    yield value
    ATTACKS.unregister("thirdparty_brighten")
    sys.modules.pop("rbv_thirdparty", None)


def test_third_party_plugin_registers_and_unregisters_an_attack(
    third_party_plugin: str, tmp_path: Path
) -> None:
    assert "thirdparty_brighten" not in ATTACKS
    assert third_party_plugin in load_plugins()
    assert ATTACKS.describe("thirdparty_brighten").startswith("Brighten: adds eps")
    suite_path = tmp_path / "plugin.yaml"
    suite_path.write_text(PLUGIN_SUITE)
    (cell,) = load_suite(suite_path).cells()
    assert cell.scenario_label == "attack:thirdparty_brighten"
    assert cell.scenario_params == {"name": "thirdparty_brighten", "eps": 2 / 255}

    ATTACKS.unregister("thirdparty_brighten")
    with pytest.raises(SuiteError) as info:
        load_suite(suite_path)
    assert info.value.problems[0][0] == "scenarios[0].name"
    assert "unknown attack 'thirdparty_brighten'" in info.value.problems[0][1]


def test_import_does_not_load_attacks_or_defenses() -> None:
    code = "import json, sys, robustbench_vit; print(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    fresh = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "robustbench_vit" in fresh
    assert plugin_modules(fresh) == []
    assert {"attacks", "attacks.pgd", "defenses"} <= set(plugin_modules(sys.modules))  # loaded here


def plugin_modules(modules: Iterable[str]) -> list[str]:
    """Names of the first-party plugin packages and their modules among `modules`."""
    return sorted(m for m in modules if m.split(".")[0] in ("attacks", "defenses"))


def test_framework_source_never_imports_attacks_or_defenses() -> None:
    offenders = []
    for path in sorted((REPO / "robustbench_vit").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module or ""]
            else:
                continue
            offenders += [f"{path.name}:{node.lineno} {m}" for m in modules
                          if m.split(".")[0] in ("attacks", "defenses")]
    assert offenders == []


# --- every registered component (new ones are tested with no edits here) ----------------------


@pytest.mark.parametrize(("kind", "name"), COMPONENTS, ids=[f"{k}-{n}" for k, n in COMPONENTS])
def test_component_has_a_one_line_description(kind: str, name: str) -> None:
    description = REGISTRIES[kind].describe(name)
    assert description.strip(), f"{kind} {name!r} has no docstring or description"
    assert "\n" not in description


@pytest.mark.parametrize(("kind", "name"), [c for c in COMPONENTS if c[0] in DATACLASS_KINDS],
                         ids=[f"{k}-{n}" for k, n in COMPONENTS if k in DATACLASS_KINDS])
def test_component_fields_are_yaml_keys(kind: str, name: str) -> None:
    target = REGISTRIES[kind].get(name)
    assert dataclasses.is_dataclass(target), f"{kind} {name!r} is not a dataclass"
    model = params_model(target)
    assert model.model_config["extra"] == "forbid"
    json.dumps(model.model_json_schema())  # the editor schema can be built


def test_registry_kinds_are_the_documented_ones() -> None:
    assert set(REGISTRIES) >= {"attacks", "defenses", "scenarios", "datasets", "metrics", "zoo",
                               "corruptions"}
    assert {"pgd", "fgsm"} <= set(REGISTRIES["attacks"])
    assert "none" in REGISTRIES["defenses"]
    assert {"clean", "attack"} <= set(REGISTRIES["scenarios"])
    assert {"digits", "synthetic"} <= set(REGISTRIES["datasets"])
    assert "digits_vit" in REGISTRIES["zoo"]


DESIGN_METRICS = ["accuracy", "robust_accuracy", "attack_success_rate", "transfer_success_rate",
                  "corruption_accuracy", "mce", "relative_mce", "shift_consistency",
                  "shifted_accuracy", "order_accuracy", "pruned_accuracy", "certified_accuracy",
                  "smoothed_accuracy", "ece"]


@pytest.mark.parametrize("name", METRICS.names())
def test_metric_declares_its_direction(name: str) -> None:
    metric = METRICS.get(name)
    assert isinstance(metric.higher_is_better, bool)
    assert metric.name == name


def test_metric_vocabulary_and_directions() -> None:
    assert set(DESIGN_METRICS) <= set(METRICS.names())
    lower_is_better = {n for n in METRICS.names() if not METRICS.get(n).higher_is_better}
    assert {"attack_success_rate", "transfer_success_rate", "mce", "relative_mce", "ece"} \
        <= lower_is_better
    assert not {"accuracy", "robust_accuracy", "certified_accuracy"} & lower_is_better
