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
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from ..core.errors import SuiteError
from ..core.params import Real
from .reader import read_yaml

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


def _undefended() -> list[str | dict[str, Any]]:
    """A model's default `defenses:`: evaluated without a defense only."""
    return ["none"]


class FinetuneDataSpec(BaseModel):
    """`finetune.data:`: the training dataset by name, with its own fields beside it (checked
    against the dataset in stage two)."""

    model_config = ConfigDict(extra="allow")
    dataset: str


class FinetuneSpec(_Strict):
    """A model's `finetune:`: the data training defenses (and, with `base: true`, the model
    itself) are fine-tuned on, and the optimizer settings. A defense's own `epochs`, `lr` and
    `distill` fields take precedence for that defense."""

    data: FinetuneDataSpec
    epochs: Annotated[int, Field(gt=0)] = 10
    lr: Annotated[float, Field(gt=0)] = 1e-3
    batch_size: Annotated[int, Field(gt=0)] = 64
    weight_decay: Annotated[float, Field(ge=0)] = 0.05
    base: bool = False
    """First fine-tune the model itself (cross-entropy): every defense of it, `none` included,
    starts from the result."""


class ModelSpec(_Strict):
    """One entry of `models:`: a label, a source and the defenses to evaluate it with."""

    name: Annotated[str, Field(pattern=_NAME)]
    source: Annotated[str, Field(pattern=SOURCE_PATTERN)]
    pretrained: bool = False
    arch: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    family: str | None = None
    """Model-family adapter (`rbv ls families`) when the timm class does not identify it."""
    defenses: list[str | dict[str, Any]] = Field(default_factory=_undefended, min_length=1)
    data: dict[str, Any] = Field(default_factory=dict)
    """Dataset fields this model is evaluated with instead of the suite's (e.g. a downstream
    task)."""
    finetune: FinetuneSpec | None = None
    """Training data (and settings) for training defenses on timm:/file: models."""


class ScenarioSpec(BaseModel):
    """One entry of `scenarios:`: `kind`, an optional `sweep`, and the scenario's own fields."""

    model_config = ConfigDict(extra="allow")
    kind: str
    sweep: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(default_factory=dict)


class RunnerSpec(_Strict):
    """`runner:`: where the cells run (`local`, or `ray` with per-cell resources)."""

    backend: Literal["local", "ray"] = "local"
    address: str | None = None
    """Ray cluster address (`auto`, `ray://host:10001`, `host:6379`); none starts a local
    cluster."""
    num_cpus: Annotated[float, Field(gt=0)] = 1.0
    """CPUs each cell task declares (also its torch thread count)."""
    num_gpus: Annotated[float, Field(ge=0)] = 0.0
    """GPUs each cell task declares (fractions share a GPU)."""
    max_retries: Annotated[int, Field(ge=0)] = 2
    """Times a task whose worker died is retried."""
    chunk_size: Annotated[int, Field(gt=0)] | None = None
    """Split cells of mergeable scenarios into tasks of this many images (rounded up to batches)."""
    cache_dir: str | None = None
    """$RBV_CACHE for the workers (a folder on shared storage for a multi-node cluster)."""
    connect_timeout: Annotated[float, Field(gt=0)] = 15.0
    """Seconds to wait for the Ray cluster at `address` to answer before failing (exit 2)."""
    lease_seconds: Annotated[float, Field(gt=0)] = 60.0
    """A cell leased by a run whose heartbeat is older than this is taken over by another run
    on the same results folder (the heartbeat beats every sixth of it)."""


class LimitsSpec(_Strict):
    """`limits:`: caps that stop a typo (a sweep too long, a billion steps) before it runs for
    hours; raise them here when a suite means it."""

    max_cells: Annotated[int, Field(gt=0)] = 10_000
    """Cells the suite may expand to (model/defense pairs × scenario points), counted from the
    sweep sizes before anything is expanded."""
    max_steps: Annotated[int, Field(gt=0)] = 10_000
    """The largest iteration count of a scenario or attack: its `steps`, or `n_queries` of a
    score-based attack."""


class CompareSpec(_Strict):
    """The other side of a paired gate: the row of another model, defense and/or params.

    The compared row has the matched row's scenario, metric and params, except what is named
    here: `model`, `defense` (label), and `params` (keys replaced; a key set to null must be
    absent or null there, e.g. `{method: random_noise, attack_layer: null}`). `by` is the margin
    the difference must clear: the lower end of its interval must lie above `by`; a negative `by`
    is a non-inferiority margin ("at most 0.02 lower": `by: -0.02`).
    """

    model: str | None = None
    defense: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    by: Real = 0.0

    @model_validator(mode="after")
    def _names_one(self) -> CompareSpec:
        if self.model is None and self.defense is None and not self.params:
            raise ValueError("a comparison needs a model, a defense and/or params to compare with")
        return self


class GateSpec(_Strict):
    """One gate: a metric of the rows matching a pattern must stay inside [min, max], and/or
    not regress from the suite's baseline file by more than its confidence intervals allow.

    `model`, `defense` and `scenario` are shell-style patterns (`attack:*`); `params` must be a
    subset of a row's parameters (fractions such as 4/255 allowed; text values are patterns too,
    `content: "corruption:*"`). Each matching row is checked.
    """

    model: str
    defense: str = "none"
    scenario: str
    metric: str
    params: dict[str, Any] = Field(default_factory=dict)
    min: Real | None = None
    max: Real | None = None
    baseline: bool = False
    """Compare to results/baselines/<suite>.csv: fail when worse beyond the confidence margin."""
    tolerance: Annotated[Real, Field(ge=0)] = 0.0
    """Extra absolute slack added to the statistical margin of a baseline gate."""
    no_flags: bool = False
    """Fail when a matched row carries a flag (an attack-failure indicator fired on it)."""
    better_than: CompareSpec | None = None
    """The matched row must beat the compared row in the metric's good direction beyond the
    interval of the difference: paired (McNemar) on the same images when both rows carry
    per-example outcomes, else independent (see results.gates)."""
    exceeds: CompareSpec | None = None
    """The matched row's value must be larger than the compared row's (whatever the metric's
    direction) beyond the interval: a paper's claim such as "DTA's success rate exceeds random
    noise's by 0.3" reads `exceeds: {params: {method: random_noise}, by: 0.3}`."""
    expect: Literal["pass", "fail"] = "pass"
    """`fail`: a claim known not to hold here. A failing check is reported as an expected
    failure (XFAIL, not a failed run) with `reason`; a passing one as XPASS. A gate that matches
    no row still fails."""
    reason: str | None = None
    """Why a gate with `expect: fail` fails here (measured, not guessed): required with it."""
    claim: str | None = None
    """The finding this gate encodes, in words (papers' suites: tools/paper_findings.py)."""
    paper: str | None = None
    """The paper's own number for the claim, as the paper reports it."""

    @model_validator(mode="after")
    def _reason_with_expect(self) -> GateSpec:
        if self.expect == "fail" and not (self.reason and self.reason.strip()):
            raise ValueError("`expect: fail` needs a `reason:` saying why the claim fails here")
        if self.expect == "pass" and self.reason is not None:
            raise ValueError("`reason:` is only for gates with `expect: fail`")
        return self


class GatesSpec(_Strict):
    """`gates:` — a list of gates, or a mapping with options and the list under `checks:`."""

    evaluate: bool = False
    """Run the suite's missing cells before checking (rbv gate, pytest plugin)."""
    confidence: Annotated[Real, Field(gt=0, lt=1)] = 0.95
    """Confidence level of the baseline gates' statistical margin."""
    checks: list[GateSpec] = Field(default_factory=list)

    _list_form: bool = PrivateAttr(default=False)

    @model_validator(mode="wrap")
    @classmethod
    def _from_list(cls, value: Any, handler: Any) -> Any:
        if not isinstance(value, list):
            return handler(value)
        gates = handler({"checks": value})
        gates._list_form = True
        return gates

    def where(self, index: int) -> str:
        """The field path of check `index`, as the user wrote it."""
        return f"gates[{index}]" if self._list_form else f"gates.checks[{index}]"


class SuiteSpec(_Strict):
    """A whole suite file."""

    suite: Annotated[str, Field(pattern=_NAME)]
    description: str | None = None
    """What the suite is for, in words (a paper's suite: the paper's title and authors)."""
    version: Annotated[int, Field(ge=0)] = 1
    seed: Annotated[int, Field(ge=0)] = 0
    device: Annotated[str, Field(pattern=_DEVICE)] = "auto"
    amp: bool = False
    data: DataSpec = Field(default_factory=DataSpec)
    models: Annotated[list[ModelSpec], Field(min_length=1)]
    scenarios: Annotated[list[ScenarioSpec], Field(min_length=1)]
    runner: RunnerSpec = Field(default_factory=RunnerSpec)
    gates: GatesSpec = Field(default_factory=GatesSpec)
    limits: LimitsSpec = Field(default_factory=LimitsSpec)

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: list[ModelSpec]) -> list[ModelSpec]:
        seen: set[str] = set()
        for model in models:
            if model.name in seen:
                raise ValueError(
                    f"duplicate model name {model.name!r}: names label leaderboard rows")
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


def parse_suite(path: str | Path) -> SuiteSpec:
    """Read and validate a suite file's YAML (stage one); raises SuiteError listing every
    problem."""
    raw = read_yaml(Path(path), suite_fields=SuiteSpec.model_fields)
    try:
        return SuiteSpec.model_validate(raw)
    except pydantic.ValidationError as exc:
        raise SuiteError(str(path), _stage_one_problems(exc, raw)) from None


def _stage_one_problems(exc: pydantic.ValidationError, raw: Any) -> list[tuple[str, str]]:
    sections: dict[str, type[BaseModel]] = {
        "models": ModelSpec, "runner": RunnerSpec, "gates": GatesSpec, "limits": LimitsSpec}

    def known(loc: list[Any]) -> list[str]:
        if len(loc) > 3 and loc[:2] == ["gates", "checks"]:
            return list(GateSpec.model_fields)
        if len(loc) > 3 and loc[0] == "models" and loc[2] == "finetune":
            return list(FinetuneSpec.model_fields)
        model: type[BaseModel] | None = sections.get(str(loc[0])) if len(loc) > 1 else SuiteSpec
        return list(model.model_fields) if model else []

    errors = exc.errors()
    list_form = isinstance(raw, dict) and isinstance(raw.get("gates"), list)
    # a plain list under `gates:` is `checks`: report gates[i], not gates.checks[i]
    for error in errors:
        loc = list(error["loc"])
        if list_form and loc[:2] == ["gates", "checks"] and len(loc) > 2:
            error["loc"] = ("gates", *loc[2:])
    return error_problems(errors, "", lambda loc: known(_gate_loc(loc)))


def _gate_loc(loc: list[Any]) -> list[Any]:
    return ["gates", "checks", *loc[1:]] if loc[:1] == ["gates"] and len(loc) > 1 \
        and isinstance(loc[1], int) else loc
