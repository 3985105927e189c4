"""Runners schedule cells and hand results to the store; they never evaluate themselves."""

from __future__ import annotations

from .base import Progress, Runner, RunSummary
from .local import LocalRunner

__all__ = ["LocalRunner", "Progress", "RunSummary", "Runner"]
