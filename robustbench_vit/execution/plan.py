"""The plan: which (model, defense, scenario) combinations of a suite will be skipped, and why,
before anything runs.

Each model is built structure-only on the meta device (no weights, no memory, no training); each
defense and scenario is asked `unsupported(model)`, which runs the same adapter checks the cell
runs. A combination the plan cannot check (an architecture that does not build on the meta
device) is left to the cell, which skips or fails with its own message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config.suite import Suite
from ..core.cells import Cell, ModelConfig, canonical_json, stable_hash
from ..core.components import Defense
from ..core.errors import RbvError, UnsupportedModel
from ..core.params import to_plain, validate_params
from ..core.registry import DEFENSES, ZOO
from ..models.sources import NormalizedModel, create_timm_backbone, split_source
from ..scenarios.base import PlanContext
from .evaluate import build_scenario

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PlannedSkip:
    """A combination the plan knows will be skipped."""

    model: str
    defense: str
    scenario: str
    reason: str

    def line(self) -> str:
        """"model / defense / scenario: reason"."""
        return f"{self.model} / {self.defense} / {self.scenario}: {self.reason}"


def structure(cfg: ModelConfig) -> nn.Module | None:
    """The model's architecture on the meta device (wrapped like a built model); None when it
    cannot be built there."""
    prefix, name = split_source(cfg.source)
    try:
        with torch.device("meta"):
            if prefix == "zoo":
                model: nn.Module = ZOO.get(name).build_untrained()
            else:
                arch = name if prefix == "timm" else (cfg.arch or "")
                model = NormalizedModel(create_timm_backbone(arch, dict(cfg.kwargs)))
    except (RbvError, RuntimeError, TypeError, ValueError, NotImplementedError) as exc:
        log.debug("plan: %s does not build on the meta device: %s", cfg.source, exc)
        return None
    if cfg.family is not None:
        model.rbv_family = cfg.family  # type: ignore[assignment]
    return model


def defense_label(cell: Cell) -> str:
    """"name", or "name(k=v,...)" with the parameters that differ from the defaults."""
    try:
        defaults = to_plain(validate_params(DEFENSES.get(cell.defense), {}))
    except Exception:  # noqa: BLE001 - a defense with required fields shows them all
        defaults = {}
    shown = ",".join(f"{k}={v}" for k, v in sorted(cell.defense_params.items())
                     if defaults.get(k, object()) != v)
    return f"{cell.defense}({shown})" if shown else cell.defense


def scenario_label(cell: Cell) -> str:
    """"kind" or "kind:name"."""
    name = cell.scenario_params.get("name")
    return f"{cell.scenario_kind}:{name}" if name else cell.scenario_kind


def _defended(defense: Any, model: nn.Module) -> nn.Module | str:
    """The defense applied to a meta copy of `model` (applied once), or the reason it does not
    apply: a defense's own `unsupported` when it overrides the default, else `apply`'s."""
    try:
        if type(defense).unsupported is not Defense.unsupported:
            reason = defense.unsupported(model)
            if reason is not None:
                return str(reason)
        outcome: nn.Module | str = defense.try_apply(model)
        return outcome
    except Exception as exc:  # noqa: BLE001 - the plan is advisory; the cell reports its own error
        log.debug("plan: %s on the meta device: %s", type(defense).__name__, exc)
        return model


def plan_skips(suite: Suite) -> list[PlannedSkip]:
    """Every (model, defense, scenario) of `suite` that will be skipped, with the reason."""
    structures: dict[str, nn.Module | None] = {}
    defended: dict[str, nn.Module | str | None] = {}
    defenses: dict[str, Any] = {}
    found: dict[tuple[str, str, str], PlannedSkip] = {}
    for cell in suite.cells("cpu"):
        where = (cell.model.name, defense_label(cell), scenario_label(cell))
        if where in found:
            continue
        model_key = stable_hash([cell.model.source, cell.model.arch, cell.model.kwargs,
                                 cell.model.family])
        if model_key not in structures:
            structures[model_key] = structure(cell.model)
        base = structures[model_key]
        if base is None:
            continue
        defense_key = stable_hash([model_key, cell.defense, canonical_json(cell.defense_params)])
        if defense_key not in defended:
            defense = validate_params(DEFENSES.get(cell.defense), cell.defense_params)
            defenses[defense_key] = defense
            defended[defense_key] = _defended(defense, base)
        model = defended[defense_key]
        if isinstance(model, str):
            found[where] = PlannedSkip(model=where[0], defense=where[1], scenario=where[2],
                                       reason=model)
            continue
        if model is None:
            continue
        context = PlanContext(model=model, model_config=cell.model, references=cell.references,
                              defense=defenses[defense_key],
                              defense_differentiable=type(defenses[defense_key]).differentiable)
        try:
            reason = build_scenario(cell).unsupported(context)
        except UnsupportedModel as exc:
            reason = str(exc)
        except Exception as exc:  # noqa: BLE001 - advisory: the cell reports its own error
            log.debug("plan: %s.unsupported: %s", cell.scenario_kind, exc)
            continue
        if reason:
            found[where] = PlannedSkip(model=where[0], defense=where[1], scenario=where[2],
                                       reason=reason)
    return list(found.values())
