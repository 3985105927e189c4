"""`clean`: top-1 accuracy and calibration on the unmodified images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar

import torch
from pydantic import Field

from ..metrics import Measurement, expected_calibration_error, proportion
from ..registry import SCENARIOS
from .base import CellContext, Scenario


@SCENARIOS.register("clean")
@dataclass(frozen=True, kw_only=True)
class CleanScenario(Scenario):
    """Clean top-1 accuracy and expected calibration error."""

    kind: ClassVar[str] = "clean"
    ece_bins: Annotated[int, Field(ge=1)] = 15

    @torch.no_grad()
    def run(self, ctx: CellContext) -> list[Measurement]:
        probs, labels = [], []
        for x, y in ctx.batches():
            with ctx.autocast():
                probs.append(ctx.model(x).float().softmax(1).cpu())
            labels.append(y.cpu())
        p, y = torch.cat(probs), torch.cat(labels)
        correct = int((p.argmax(1) == y).sum())
        ece = expected_calibration_error(p, y, self.ece_bins)
        return [proportion("accuracy", correct, len(y)),
                Measurement(metric="ece", value=ece, n=len(y))]
