"""The `corruption` scenario: ImageNet-C corruptions, with its mCE aggregates and plots."""

from __future__ import annotations

from . import mce, plots, scenario  # noqa: F401 - each module registers its components
