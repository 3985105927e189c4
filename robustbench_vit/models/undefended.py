"""The undefended model: `none` in a suite's `defenses:` list."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.components import Defense
from ..core.registry import DEFENSES


@DEFENSES.register("none")
@dataclass(frozen=True, kw_only=True)
class NoDefense(Defense):
    """No defense: the model as trained."""
