"""`clean`: top-1 accuracy and calibration on the unmodified images."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field

from ..core.metrics import Measurement, calibration_error, proportion, register_metric
from ..core.registry import SCENARIOS
from .base import CellContext, Scenario, joined_outcomes

register_metric("ece", higher_is_better=False, proportion=False,
                description="Expected calibration error over 15 equal-width confidence bins")


@SCENARIOS.register("clean")
@dataclass(frozen=True, kw_only=True)
class CleanScenario(Scenario):
    """Clean top-1 accuracy and expected calibration error."""

    kind: ClassVar[str] = "clean"
    ece_bins: Annotated[int, Field(ge=1)] = 15

    chunkable: ClassVar[bool] = True

    def run(self, ctx: CellContext) -> list[Measurement]:
        return self.merge([self.partial(ctx)])

    @torch.no_grad()
    def partial(self, ctx: CellContext) -> dict[str, Any]:
        """Top-1 confidence and correctness of every image."""
        conf, correct = [], []
        for x, y in ctx.batches():
            with ctx.autocast():
                top, pred = ctx.model(x).float().softmax(1).max(1)
            conf.append(top.cpu())
            correct.append((pred == y).float().cpu())
        hits = torch.cat(correct)
        return {"conf": torch.cat(conf), "correct": hits, "examples": ctx.outcomes(hits > 0)}

    def merge(self, parts: list[dict[str, Any]]) -> list[Measurement]:
        conf = torch.cat([p["conf"] for p in parts])
        correct = torch.cat([p["correct"] for p in parts])
        ece = calibration_error(conf, correct, self.ece_bins)
        accuracy = replace(proportion("accuracy", int(correct.sum()), len(correct)),
                           examples=joined_outcomes([p["examples"] for p in parts]))
        return [accuracy,
                Measurement(metric="ece", value=ece, n=len(correct))]
