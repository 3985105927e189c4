"""robustbench_vit: robustness and adversarial-evaluation benchmark suite for Vision
Transformers."""

from __future__ import annotations

__version__ = "0.1.0"

from .api import (
    Attack,
    Defense,
    register_attack,
    register_dataset,
    register_defense,
    register_recipe,
)
from .cells import Cell
from .errors import RbvError, SuiteError
from .evaluate import evaluate_cell
from .plugins import load_plugins
from .registry import ATTACKS, DATASETS, DEFENSES, METRICS, SCENARIOS, ZOO, Registry
from .run import run_suite
from .spec import load_suite

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
    "SuiteError",
    "ZOO",
    "__version__",
    "evaluate_cell",
    "load_plugins",
    "load_suite",
    "register_attack",
    "register_dataset",
    "register_defense",
    "register_recipe",
    "run_suite",
]
