"""Layer 5 — built-in scenarios. Each module (or subpackage) registers one scenario kind with the
metrics it reports, its aggregates and its plots, through the same registries a plugin uses."""

from __future__ import annotations

from ..core._plugin_package import import_submodules
from .base import CellContext, Scenario

import_submodules(__name__, __path__)

__all__ = ["CellContext", "Scenario"]
