"""Test-only scenarios for the Ray tests, registered inside Ray workers by a setup hook.

`ray_test_crash` kills its worker process (os._exit) on the first attempt — the marker file it
creates lets the retry succeed; `ray_test_fail` raises inside the scenario.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from robustbench_vit.core.metrics import Measurement, proportion
from robustbench_vit.core.registry import SCENARIOS
from robustbench_vit.scenarios.base import CellContext, Scenario


@dataclass(frozen=True, kw_only=True)
class CrashOnceScenario(Scenario):
    """Kills the worker unless `marker` exists (creating it first); then counts the images."""

    kind: ClassVar[str] = "ray_test_crash"
    marker: str

    def run(self, ctx: CellContext) -> list[Measurement]:
        path = Path(self.marker)
        if not path.exists():
            path.write_text(str(os.getpid()))
            os._exit(1)
        n = sum(len(y) for _, y in ctx.batches())
        return [proportion("accuracy", n, n)]


@dataclass(frozen=True, kw_only=True)
class FailScenario(Scenario):
    """Always raises."""

    kind: ClassVar[str] = "ray_test_fail"

    def run(self, ctx: CellContext) -> list[Measurement]:
        raise RuntimeError("boom in a ray worker")


def register() -> None:
    """Register the test scenarios (idempotent): Ray's worker_process_setup_hook and the driver."""
    for cls in (CrashOnceScenario, FailScenario):
        if cls.kind not in SCENARIOS:
            SCENARIOS.register(cls.kind, cls)
