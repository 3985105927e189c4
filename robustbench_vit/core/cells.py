"""Cells: one (model, defense, scenario point, data slice, seed) unit of work, as plain data."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

CELL_FORMAT = 3
"""Bump when evaluation code changes numbers for identical cells (part of every key)."""


def canonical_json(obj: Any) -> str:
    """Stable JSON: sorted keys, no spaces, floats as repr."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex digest of the canonical JSON of `obj`."""
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:length]


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """A model as the suite names it; `fingerprint` identifies its weights."""

    name: str
    source: str
    pretrained: bool = False
    arch: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    family: str | None = None
    """The model-family adapter to use instead of the one chosen by the timm class."""
    finetune: dict[str, Any] | None = None
    """The suite's `finetune:` as plain data (data with every dataset field, epochs, lr,
    batch_size, weight_decay, base): the training data of training defenses on timm:/file:
    models, and with `base: true` a fine-tune of the model itself (see models/user_finetune.py)."""


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """The evaluation data: a registered dataset, its fields, subset size and batch size."""

    dataset: str
    params: dict[str, Any] = field(default_factory=dict)
    n_examples: int | None = None
    batch_size: int = 100


def _weights(model: ModelConfig) -> dict[str, Any]:
    """What identifies a model's numbers: everything but its display name."""
    out = asdict(model)
    out.pop("name")
    for optional in ("family", "finetune"):  # unset optional fields leave cell keys unchanged
        if out.get(optional) is None:
            out.pop(optional, None)
    return out


@dataclass(frozen=True, kw_only=True)
class Cell:
    """Plain, picklable description of one evaluation; `key` hashes everything that sets its
    numbers."""

    suite: str
    suite_version: int
    model: ModelConfig
    defense: str
    defense_params: dict[str, Any]
    scenario_kind: str
    scenario_params: dict[str, Any]
    data: DataConfig
    seed: int
    references: dict[str, ModelConfig] = field(default_factory=dict)
    scenario_options: dict[str, Any] = field(default_factory=dict)
    """The scenario's execution-only fields (see Scenario.execution_fields): not part of `key` or
    `row_params`."""
    device: str = "cpu"
    amp: bool = False

    @property
    def scenario_label(self) -> str:
        """`kind` or `kind:name` — the `scenario` column of result rows."""
        name = self.scenario_params.get("name")
        return f"{self.scenario_kind}:{name}" if name else self.scenario_kind

    @property
    def key(self) -> str:
        """Stable hash of what can change this cell's numbers (not the model's label)."""
        model = _weights(self.model)
        payload = {
            "format": CELL_FORMAT,
            "suite": self.suite,
            "suite_version": self.suite_version,
            "model": model,
            "defense": [self.defense, self.defense_params],
            "scenario": [self.scenario_kind, self.scenario_params],
            "data": asdict(self.data),
            "references": {k: _weights(v) for k, v in sorted(self.references.items())},
            "seed": self.seed,
            "amp": self.amp,
        }
        return stable_hash(payload, 32)

    @property
    def row_params(self) -> dict[str, Any]:
        """The `params` column: scenario parameters (without the name) and defense parameters."""
        params = {k: v for k, v in self.scenario_params.items() if k != "name"}
        if self.defense_params:
            params["defense_params"] = self.defense_params
        return params

