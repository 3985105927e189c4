"""The `layer_order` scenario: random block orders and pruned blocks, its aggregates and plots."""

from __future__ import annotations

from . import plots, scenario, stats  # noqa: F401 - each module registers its components
