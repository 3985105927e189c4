"""The `fourier` scenario: error under Fourier basis perturbations per frequency, its heat map."""

from __future__ import annotations

from . import basis, plots, scenario  # noqa: F401 - each module registers its components
