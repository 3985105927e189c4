"""Suite spec: the pydantic models at the YAML boundary, and `load_suite`.

Validation runs in two stages. Stage one checks the suite's own fields with pydantic
(extra keys are errors). Stage two validates each component (dataset, defense, scenario,
zoo recipe, sweep point) against the dataclass registered under its name, so the YAML keys
are exactly the component's fields. All problems are gathered and raised as one SuiteError
naming the file and the field path of each, e.g. ``scenarios[1].eps``.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ._yaml import read_yaml
from .errors import SuiteError
from .params import Real

_NAME = r"^[A-Za-z0-9_.\-+]+$"
_DEVICE = r"^(auto|cpu|cuda(:\d+)?|mps)$"
SOURCE_PATTERN = r"^(zoo|timm|file):.+$"
_PATTERN_MEANING = {
    _NAME: "a name of letters, digits and _ . - +",
    _DEVICE: "auto, cpu, cuda, cuda:N or mps",
    SOURCE_PATTERN: "zoo:<recipe>, timm:<architecture> or file:<path>",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSpec(BaseModel):
    """`data:`: the dataset (its own fields allowed beside these), subset size and batch size."""

    model_config = ConfigDict(extra="allow")
    dataset: str = "digits"
    n_examples: Annotated[int, Field(gt=0)] | None = None
    batch_size: Annotated[int, Field(gt=0)] = 100


class ModelSpec(_Strict):
    """One entry of `models:`: a label, a source and the defenses to evaluate it with."""

    name: Annotated[str, Field(pattern=_NAME)]
    source: Annotated[str, Field(pattern=SOURCE_PATTERN)]
    pretrained: bool = False
    arch: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    defenses: list[str | dict[str, Any]] = Field(default_factory=lambda: ["none"], min_length=1)
    data: dict[str, Any] = Field(default_factory=dict)
    """Dataset fields this model is evaluated with instead of the suite's (e.g. a downstream task)."""


class ScenarioSpec(BaseModel):
    """One entry of `scenarios:`: `kind`, an optional `sweep`, and the scenario's own fields."""

    model_config = ConfigDict(extra="allow")
    kind: str
    sweep: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(default_factory=dict)


class RunnerSpec(_Strict):
    """`runner:`: where the cells run."""

    backend: Literal["local"] = "local"


class GateSpec(_Strict):
    """One entry of `gates:`: a metric of a cell pattern that must stay inside [min, max]."""

    model: str
    defense: str = "none"
    scenario: str
    metric: str
    params: dict[str, Any] = Field(default_factory=dict)
    min: Real | None = None
    max: Real | None = None


class SuiteSpec(_Strict):
    """A whole suite file."""

    suite: Annotated[str, Field(pattern=_NAME)]
    version: Annotated[int, Field(ge=0)] = 1
    seed: Annotated[int, Field(ge=0)] = 0
    device: Annotated[str, Field(pattern=_DEVICE)] = "auto"
    amp: bool = False
    data: DataSpec = Field(default_factory=DataSpec)
    models: Annotated[list[ModelSpec], Field(min_length=1)]
    scenarios: Annotated[list[ScenarioSpec], Field(min_length=1)]
    runner: RunnerSpec = Field(default_factory=RunnerSpec)
    gates: list[GateSpec] = Field(default_factory=list)

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelSpec]) -> list[ModelSpec]:
        seen: set[str] = set()
        for model in models:
            if model.name in seen:
                raise ValueError(f"duplicate model name {model.name!r}: names label leaderboard rows")
            seen.add(model.name)
        return models


def format_loc(loc: tuple[Any, ...] | list[Any]) -> str:
    """("scenarios", 3, "eps") -> "scenarios[3].eps"."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.match(r"^[A-Za-z_][\w\-]*$", str(part)):
            out += f".{part}" if out else str(part)
        # pydantic adds union-member tags such as "str" or "function-after[...]": skip them
    return out


def pydantic_problems(
    exc: pydantic.ValidationError, prefix: str = "", known: list[str] | None = None
) -> list[tuple[str, str]]:
    """Located, readable problems from a pydantic error; did-you-mean for unknown keys."""
    return error_problems(exc.errors(), prefix, lambda loc: known or [])


def error_problems(
    errors: list[Any], prefix: str, known: Any
) -> list[tuple[str, str]]:
    """Problems from pydantic error dicts; `known(loc)` lists the keys allowed where loc points."""
    problems = []
    for err in errors:
        loc = [p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in _UNION_TAGS))]
        path = _join(prefix, format_loc(loc))
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            key = str(loc[-1]) if loc else ""
            allowed = known(loc)
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            msg = f"unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else "")
            if allowed:
                msg += f" (allowed: {', '.join(allowed)})"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif err["type"] == "string_pattern_mismatch":
            pattern = err.get("ctx", {}).get("pattern", "")
            expected = _PATTERN_MEANING.get(pattern, f"text matching {pattern}")
            msg = f"expected {expected}, got {_short(err.get('input'))}"
        elif "input" in err and err["type"] != "value_error":
            msg += f", got {_short(err['input'])}"
        problems.append((path, msg))
    return _dedupe(problems)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_UNION_TAGS = {"str", "int", "float", "bool", "dict", "list", "dict[str,any]", "none"}


def _join(prefix: str, path: str) -> str:
    if not prefix:
        return path
    if not path:
        return prefix
    return prefix + (path if path.startswith("[") else "." + path)


def _dedupe(problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    seen, out = set(), []
    for p in problems:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def load_suite(path: str | Path) -> Any:
    """Read, validate and build a suite file; raises SuiteError listing every problem."""
    from .suite import build_suite

    path = Path(path)
    raw = read_yaml(path)
    try:
        spec = SuiteSpec.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise SuiteError(str(path), _stage_one_problems(exc)) from None
    return build_suite(spec, path)


def _stage_one_problems(exc: pydantic.ValidationError) -> list[tuple[str, str]]:
    sections = {"models": ModelSpec, "runner": RunnerSpec, "gates": GateSpec}

    def known(loc: list[Any]) -> list[str]:
        model = sections.get(str(loc[0])) if len(loc) > 1 else SuiteSpec
        return list(model.model_fields) if model else []

    return error_problems(exc.errors(), "", known)
