"""A validated suite (stage two of validation) and its expansion into cells."""

from __future__ import annotations

import difflib
import fnmatch
import itertools
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pydantic

from ..core.cells import Cell, DataConfig, ModelConfig
from ..core.errors import SuiteError, UnknownNameError
from ..core.params import ParamError, field_names, to_plain, validate_params
from ..core.plugins import load_plugins
from ..core.registry import DATASETS, DEFENSES, METRICS, SCENARIOS, scenario_class
from ..models.adapters import ADAPTERS
from ..models.sources import SOURCES, model_fingerprint, model_problems, resolve_path, split_source
from ..models.user_finetune import base_fingerprint
from .caps import check_cell_count, iteration_problems
from .spec import FinetuneSpec, GatesSpec, SuiteSpec, error_problems


@dataclass(frozen=True, kw_only=True)
class ScenarioConfig:
    """A scenario entry: its kind and one validated parameter set per sweep point."""

    kind: str
    points: tuple[dict[str, Any], ...]
    references: dict[str, ModelConfig] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    """Execution-only fields (the scenario's `execution_fields`), the same for every point."""


@dataclass(frozen=True, kw_only=True)
class DefenseConfig:
    """A defense entry of a model."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Suite:
    """A suite that validated: everything needed to expand cells, as plain data."""

    name: str
    version: int
    seed: int
    device: str
    amp: bool
    data: DataConfig
    model_data: dict[str, DataConfig]
    models: tuple[ModelConfig, ...]
    defenses: dict[str, tuple[DefenseConfig, ...]]
    scenarios: tuple[ScenarioConfig, ...]
    runner: dict[str, Any]
    gates: GatesSpec
    path: str
    description: str | None = None

    def cells(self, device: str | None = None) -> list[Cell]:
        """Every (model, defense, scenario point) cell, in suite order."""
        out = []
        for model in self.models:
            for defense in self.defenses[model.name]:
                for scenario in self.scenarios:
                    for point in scenario.points:
                        out.append(Cell(
                            suite=self.name, suite_version=self.version, model=model,
                            defense=defense.name, defense_params=defense.params,
                            scenario_kind=scenario.kind, scenario_params=point,
                            scenario_options=scenario.options,
                            data=self.model_data[model.name], references=scenario.references,
                            seed=self.seed, device=device or self.device, amp=self.amp,
                        ))
        return out


class _Problems:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        self.items.append((path, message))

    def component(self, where: str, exc: Exception, known: list[str]) -> None:
        """Record a component validation failure located under `where`."""
        if isinstance(exc, pydantic.ValidationError):
            self.items += error_problems(exc.errors(), where, lambda loc: known)
        elif isinstance(exc, ParamError):
            self.add(f"{where}.{exc.field}", str(exc))
        else:
            self.add(where, str(exc))


def build_suite(spec: SuiteSpec, path: Path) -> Suite:
    """Stage two: validate components against the registries; raise SuiteError with every
    problem."""
    load_plugins()
    check_cell_count(spec, str(path))  # before a single sweep point is expanded
    problems = _Problems()
    base_dir = path.resolve().parent
    data = _build_data(spec, {}, "data", problems)
    models, defenses, model_data = [], {}, {}
    for i, m in enumerate(spec.models):
        models.append(_build_model(m, i, base_dir, problems))
        defenses[m.name] = tuple(_build_defense(d, f"models[{i}].defenses[{j}]", problems)
                                 for j, d in enumerate(m.defenses))
        _check_training_data(models[-1], defenses[m.name], i, problems)
        model_data[m.name] = (_build_data(spec, m.data, f"models[{i}].data", problems)
                              if m.data else data)
    by_label = {m.name: m for m in models}
    scenarios = tuple(_build_scenario(s.model_dump(), i, problems, by_label, base_dir)
                      for i, s in enumerate(spec.scenarios))
    for i, (entry, built) in enumerate(zip(spec.scenarios, scenarios, strict=True)):
        problems.items += iteration_problems(i, entry.sweep, [{**p, **built.options}
                                                              for p in built.points],
                                             spec.limits.max_steps)
    _check_gates(spec, problems)
    if problems.items:
        raise SuiteError(str(path), problems.items)
    return Suite(name=spec.suite, version=spec.version, seed=spec.seed, device=spec.device,
                 amp=spec.amp, data=data, model_data=model_data, models=tuple(models),
                 defenses=defenses, scenarios=scenarios, runner=spec.runner.model_dump(),
                 gates=spec.gates, path=str(path), description=spec.description)


def _build_data(spec: SuiteSpec, overrides: dict[str, Any], where: str,
                problems: _Problems) -> DataConfig:
    """The suite's data with a model's `data:` overrides of dataset fields. A model's `dataset:`
    names another dataset: it takes the suite's dataset fields it also has (split, image_size...)
    and its own."""
    extras = {**(spec.data.model_extra or {}), **overrides}
    dataset = extras.pop("dataset", spec.data.dataset)
    try:
        cls = DATASETS.get(dataset)
        if dataset != spec.data.dataset:
            shared = set(field_names(cls))
            extras = {k: v for k, v in extras.items() if k in overrides or k in shared}
        params = to_plain(validate_params(cls, extras))
    except UnknownNameError as exc:
        if where == "data" or "dataset" in overrides:  # else reported once, for the suite
            problems.add("data.dataset" if where == "data" else f"{where}.dataset", str(exc))
        params = extras
    except (pydantic.ValidationError, ParamError, ValueError) as exc:
        problems.component(where, exc, ["dataset", "n_examples", "batch_size", *field_names(cls)])
        params = extras
    return DataConfig(dataset=dataset, params=params, n_examples=spec.data.n_examples,
                      batch_size=spec.data.batch_size)


def _build_model(m: Any, i: int, base_dir: Path, problems: _Problems) -> ModelConfig:
    cfg = ModelConfig(name=m.name, source=m.source, pretrained=m.pretrained, arch=m.arch,
                      kwargs=m.kwargs, family=m.family,
                      finetune=_build_finetune(m.finetune, f"models[{i}].finetune", problems))
    found = model_problems(cfg, base_dir)
    if m.family is not None and m.family not in ADAPTERS:
        close = ADAPTERS.suggest(m.family)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        found = [*found, ("family", f"unknown model family {m.family!r}{hint} "
                                    f"(known: {', '.join(ADAPTERS.names())})")]
    for fld, msg in found:
        problems.add(f"models[{i}].{fld}", msg)
    if found:
        return cfg
    if split_source(cfg.source)[0] == "file":
        cfg = replace(cfg, source=f"file:{resolve_path(cfg.source, base_dir)}")
    fingerprint = model_fingerprint(cfg, base_dir)
    if cfg.finetune is not None and cfg.finetune["base"]:  # the cells see the fine-tuned weights
        fingerprint = base_fingerprint(fingerprint, cfg.finetune)
    return replace(cfg, fingerprint=fingerprint)


def _build_finetune(spec: FinetuneSpec | None, where: str,
                    problems: _Problems) -> dict[str, Any] | None:
    """A model's `finetune:` as plain data, its dataset fields validated (defaults filled in)."""
    if spec is None:
        return None
    out = spec.model_dump(exclude={"data"})
    extras = dict(spec.data.model_extra or {})
    try:
        cls = DATASETS.get(spec.data.dataset)
        extras = to_plain(validate_params(cls, extras))
    except UnknownNameError as exc:
        problems.add(f"{where}.data.dataset", str(exc))
    except (pydantic.ValidationError, ParamError, ValueError) as exc:
        problems.component(f"{where}.data", exc, ["dataset", *field_names(cls)])
    return {**out, "data": {"dataset": spec.data.dataset, **extras}}


def _check_training_data(model: ModelConfig, defenses: tuple[DefenseConfig, ...], i: int,
                         problems: _Problems) -> None:
    """A training defense needs data to fine-tune on: a zoo: recipe's, or the model's
    `finetune:`."""
    prefix = split_source(model.source)[0]
    if model.finetune is not None or prefix == "zoo" or prefix not in SOURCES:
        return  # an unknown prefix is reported by _build_model
    for j, entry in enumerate(defenses):
        try:
            defense = validate_params(DEFENSES.get(entry.name), entry.params)
        except (UnknownNameError, pydantic.ValidationError, ParamError, ValueError):
            continue  # reported by _build_defense
        if defense.needs_training():
            problems.add(f"models[{i}].defenses[{j}]",
                         f"{entry.name} is a training defense: a {prefix}: model needs "
                         "finetune: {data: ...} (the data to fine-tune it on)")


def _build_defense(entry: str | dict[str, Any], where: str, problems: _Problems) -> DefenseConfig:
    params = {"name": entry} if isinstance(entry, str) else dict(entry)
    name = params.pop("name", None)
    if not isinstance(name, str):
        problems.add(where, "a defense is a name or a mapping with `name:`")
        return DefenseConfig(name=str(name))
    try:
        cls = DEFENSES.get(name)
        return DefenseConfig(name=name, params=to_plain(validate_params(cls, params)))
    except UnknownNameError as exc:
        problems.add(f"{where}.name" if isinstance(entry, dict) else where, str(exc))
    except (pydantic.ValidationError, ParamError, ValueError) as exc:
        problems.component(where, exc, ["name", *field_names(cls)])
    return DefenseConfig(name=name, params=params)


def _build_scenario(raw: dict[str, Any], i: int, problems: _Problems,
                    models: dict[str, ModelConfig], base_dir: Path) -> ScenarioConfig:
    where = f"scenarios[{i}]"
    kind, sweep = raw.pop("kind"), raw.pop("sweep", {}) or {}
    try:
        cls = scenario_class(kind, raw.get("name"))
    except UnknownNameError as exc:
        field_name = "kind" if exc.kind == SCENARIOS.kind else "name"
        problems.add(f"{where}.{field_name}", str(exc))
        return ScenarioConfig(kind=kind, points=())
    references = {}
    for ref in getattr(cls, "model_refs", ()):
        if isinstance(raw.get(ref), str):
            found = _resolve_reference(raw[ref], f"{where}.{ref}", models, base_dir, problems)
            if found:
                references[ref] = found
    keys = list(sweep)
    for key in set(keys) & getattr(cls, "execution_fields", frozenset()):
        problems.add(f"{where}.sweep.{key}", f"`{key}` changes how the cells run, not their "
                     "numbers: set it once instead of sweeping it")
    points = []
    for values in itertools.product(*(sweep[k] for k in keys)):
        point = dict(zip(keys, values, strict=False))
        try:
            points.append(cls.from_params({**raw, **point}).to_params())
        except UnknownNameError as exc:
            problems.add(f"{where}.name", str(exc))
            break
        except (pydantic.ValidationError, ParamError, ValueError, TypeError) as exc:
            _sweep_problem(problems, where, exc, point, sweep, cls, raw)
            break
    execution: frozenset[str] = getattr(cls, "execution_fields", frozenset())
    options = {k: v for k, v in points[0].items() if k in execution} if points else {}
    points = [{k: v for k, v in p.items() if k not in execution} for p in points]
    return ScenarioConfig(kind=kind, points=tuple(points), references=references, options=options)


def _resolve_reference(value: str, where: str, models: dict[str, ModelConfig], base_dir: Path,
                       problems: _Problems) -> ModelConfig | None:
    """A model label of this suite, or a source string (zoo:/timm:/file:), as a built config."""
    if value in models:
        return models[value]
    if split_source(value)[0] not in ("zoo", "timm", "file") or ":" not in value:
        close = difflib.get_close_matches(value, list(models), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        problems.add(where, f"no model named {value!r} in this suite and not a zoo:/timm:/file: "
                            f"source{hint}")
        return None
    cfg = ModelConfig(name=value, source=value)
    found = model_problems(cfg, base_dir)
    for _, msg in found:
        problems.add(where, msg)
    return None if found else replace(cfg, fingerprint=model_fingerprint(cfg, base_dir))


def _sweep_problem(problems: _Problems, where: str, exc: Exception, point: dict[str, Any],
                   sweep: dict[str, list[Any]], cls: Any, raw: dict[str, Any]) -> None:
    """Locate an error in a sweep value as `sweep.eps[2]`, an unknown sweep key as `sweep.epz`."""
    fields = _scenario_fields(cls, raw)
    known = ["kind", "sweep", *fields]
    if isinstance(exc, pydantic.ValidationError):
        for err in exc.errors():
            key = err["loc"][0] if err["loc"] else None
            if key in point and err["type"] == "extra_forbidden":
                err = {**err, "loc": ("sweep", key)}
            elif key in point:
                index = [repr(v) for v in sweep[key]].index(repr(point[key]))
                err = {**err, "loc": ("sweep", key, index, *err["loc"][1:])}
            problems.items += error_problems(
                [err], where, lambda loc: fields if loc[:1] == ["sweep"] else known)
    elif isinstance(exc, ParamError) and exc.field in point:
        index = [repr(v) for v in sweep[exc.field]].index(repr(point[exc.field]))
        problems.add(f"{where}.sweep.{exc.field}[{index}]", str(exc))
    else:
        problems.component(where, exc, known)


def _scenario_fields(cls: Any, raw: dict[str, Any]) -> list[str]:
    from ..core.registry import ATTACKS

    name = raw.get("name")
    if getattr(cls, "kind", "") == "attack" and isinstance(name, str) and name in ATTACKS:
        return ["name", "eot", *field_names(ATTACKS.get(raw["name"]))]
    return field_names(cls)


def _check_gates(spec: SuiteSpec, problems: _Problems) -> None:
    names = [m.name for m in spec.models]
    for i, gate in enumerate(spec.gates.checks):
        where = spec.gates.where(i)
        if gate.metric not in METRICS:
            close = METRICS.suggest(gate.metric)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.add(f"{where}.metric", f"unknown metric {gate.metric!r}{hint}")
        if not fnmatch.filter(names, gate.model):
            problems.add(f"{where}.model", f"no model of this suite matches {gate.model!r} "
                         f"(models: {', '.join(names)})")
        if gate.min is None and gate.max is None and not gate.baseline and not gate.no_flags \
                and gate.better_than is None and gate.exceeds is None:
            problems.add(where, "a gate needs `min:`, `max:`, `baseline: true`, "
                                "`no_flags: true`, `better_than:` or `exceeds:`")
        for side in ("better_than", "exceeds"):
            other = getattr(gate, side)
            if other is not None and other.model is not None \
                    and not fnmatch.filter(names, other.model):
                problems.add(f"{where}.{side}.model", f"no model of this suite is named "
                             f"{other.model!r} (models: {', '.join(names)})")
        if gate.min is not None and gate.max is not None and gate.min > gate.max:
            problems.add(where, f"min {gate.min} is above max {gate.max}")
