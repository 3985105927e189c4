"""The extension contract: what an attack, a defense, a scenario or a dataset plugin uses.

A plugin is a module that registers components with the functions below. Built-in plugins
(`attacks`, `defenses`, and the framework's own `scenarios`) load exactly like third-party ones:
through the entry-point group ``robustbench_vit.plugins`` or the tuple
`robustbench_vit.core.plugins.BUILTIN_PLUGINS`.

Components are kw_only dataclasses; their fields are the YAML keys a suite may set.
Images are float tensors in [0,1] pixel space; models take such images (normalization is inside).

A scenario brings everything about itself: its class (`register_scenario`), the metrics it
reports (`register_metric`: direction, proportion, headline column), aggregates derived from its
stored rows (`register_aggregate`: long table in, extra long-table rows out) and plots for the
HTML report (`register_plot`: prepared long table in, plot dicts out; see `robustbench_vit.report
.plots` for the plot format and helpers). A metric no module registered fails the cell.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .core._plugin_package import import_submodules
from .core.cells import canonical_json
from .core.components import Attack, Defense, Norm
from .core.errors import (
    MissingDependencyError,
    ModelLoadError,
    RbvError,
    ScenarioNotApplicable,
    UnsupportedModel,
)
from .core.metrics import Measurement, Metric, proportion, register_metric, wilson_interval
from .core.params import ParamError
from .core.registry import (
    AGGREGATES,
    ATTACKS,
    CORRUPTIONS,
    DATASETS,
    DEFENSES,
    METRICS,
    PLOTS,
    SCENARIOS,
    ZOO,
)
from .data.corruptions import corrupt_batch
from .models.adapters import FamilyAdapter, Stage, adapter_for, arranged, check_same_shapes
from .models.adapters.attention import tempered
from .models.sources import NormalizedModel
from .models.vit import backbone_of, capture_block_outputs, num_blocks, patch_size
from .results.table import DEFENSE_PARAMS, LONG_COLUMNS
from .scenarios.base import CellContext, Scenario

register_attack = ATTACKS.register
register_defense = DEFENSES.register
register_dataset = DATASETS.register
register_recipe = ZOO.register
register_scenario = SCENARIOS.register


def register_aggregate(name: str, function: Callable[..., Any] | None = None,
                       **meta: Any) -> Any:
    """Register `function(long_table) -> DataFrame of LONG_COLUMNS rows` (decorator when
    `function` is omitted). Aggregates run in name order on every leaderboard, HTML page and
    gate check."""
    return AGGREGATES.register(name, function, **meta)


def register_plot(name: str, function: Callable[..., Any] | None = None, *,
                  order: int = 100, **meta: Any) -> Any:
    """Register `function(prepared_table) -> list of plot dicts` for the HTML report
    (decorator when `function` is omitted); `order` places its section (built-ins use 10-50)."""
    return PLOTS.register(name, function, order=order, **meta)


__all__ = [
    "AGGREGATES",
    "ATTACKS",
    "Attack",
    "CORRUPTIONS",
    "CellContext",
    "DATASETS",
    "DEFENSES",
    "DEFENSE_PARAMS",
    "Defense",
    "LONG_COLUMNS",
    "METRICS",
    "Measurement",
    "Metric",
    "MissingDependencyError",
    "ModelLoadError",
    "NormalizedModel",
    "Norm",
    "PLOTS",
    "ParamError",
    "RbvError",
    "SCENARIOS",
    "Scenario",
    "ScenarioNotApplicable",
    "Stage",
    "UnsupportedModel",
    "FamilyAdapter",
    "adapter_for",
    "arranged",
    "check_same_shapes",
    "tempered",
    "ZOO",
    "backbone_of",
    "canonical_json",
    "corrupt_batch",
    "capture_block_outputs",
    "import_submodules",
    "num_blocks",
    "patch_size",
    "proportion",
    "register_aggregate",
    "register_attack",
    "register_dataset",
    "register_defense",
    "register_metric",
    "register_plot",
    "register_recipe",
    "register_scenario",
    "wilson_interval",
]
