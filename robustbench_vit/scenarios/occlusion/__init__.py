"""The `occlusion` scenario: random patch drop, its mean-over-ratios aggregate and its plot."""

from __future__ import annotations

from . import plots, scenario  # noqa: F401 - each module registers its components
