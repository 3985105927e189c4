"""Built-in scenarios; each module registers one scenario kind."""

from __future__ import annotations

from .._plugin_package import import_submodules
from .base import CellContext, Scenario

import_submodules(__name__, __path__)

__all__ = ["CellContext", "Scenario"]
