"""robustbench_vit: robustness and adversarial-evaluation benchmark suite for Vision
Transformers.

The package namespace is lazy: `import robustbench_vit` imports nothing heavy (no torch), and each
public name below is imported from its layer on first access. The layers, lowest first:

    core/       records, registries, plugin loading, parameters, metrics, cache paths
    models/     model sources, zoo, fine-tuning, training, defended models, compression, ViT
                introspection
    data/       datasets, corruption functions and the corrupted-image cache, published tables
    config/     YAML reading, suite spec, expansion into cells, JSON Schema
    results/    results store, long table and pivot, gate checks
    report/     HTML page model, plots, SVG, template
    scenarios/  built-in scenarios, each with its own metrics, aggregates and plots
    execution/  run a suite: evaluate_cell, chunks, runners, progress, gates over a run
    api, cli, pytest_plugin on top.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .core.versions import rbv_version

__version__ = rbv_version()

_EXPORTS: dict[str, str] = {
    "Attack": "robustbench_vit.api",
    "Defense": "robustbench_vit.api",
    "Scenario": "robustbench_vit.api",
    "register_attack": "robustbench_vit.api",
    "register_dataset": "robustbench_vit.api",
    "register_defense": "robustbench_vit.api",
    "register_recipe": "robustbench_vit.api",
    "register_scenario": "robustbench_vit.api",
    "register_metric": "robustbench_vit.api",
    "Cell": "robustbench_vit.core.cells",
    "RbvError": "robustbench_vit.core.errors",
    "SuiteError": "robustbench_vit.core.errors",
    "load_plugins": "robustbench_vit.core.plugins",
    "Registry": "robustbench_vit.core.registry",
    "ATTACKS": "robustbench_vit.core.registry",
    "DATASETS": "robustbench_vit.core.registry",
    "DEFENSES": "robustbench_vit.core.registry",
    "METRICS": "robustbench_vit.core.registry",
    "SCENARIOS": "robustbench_vit.core.registry",
    "ZOO": "robustbench_vit.core.registry",
    "load_suite": "robustbench_vit.config.load",
    "evaluate_cell": "robustbench_vit.execution.evaluate",
    "run_suite": "robustbench_vit.execution.run",
}

__all__ = [
    "ATTACKS",
    "Attack",
    "Cell",
    "DATASETS",
    "DEFENSES",
    "Defense",
    "METRICS",
    "RbvError",
    "Registry",
    "SCENARIOS",
    "Scenario",
    "SuiteError",
    "ZOO",
    "__version__",
    "evaluate_cell",
    "load_plugins",
    "load_suite",
    "register_attack",
    "register_dataset",
    "register_defense",
    "register_metric",
    "register_recipe",
    "register_scenario",
    "run_suite",
]

if TYPE_CHECKING:
    from .api import (
        Attack,
        Defense,
        Scenario,
        register_attack,
        register_dataset,
        register_defense,
        register_metric,
        register_recipe,
        register_scenario,
    )
    from .config.load import load_suite
    from .core.cells import Cell
    from .core.errors import RbvError, SuiteError
    from .core.plugins import load_plugins
    from .core.registry import ATTACKS, DATASETS, DEFENSES, METRICS, SCENARIOS, ZOO, Registry
    from .execution.evaluate import evaluate_cell
    from .execution.run import run_suite


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'robustbench_vit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
