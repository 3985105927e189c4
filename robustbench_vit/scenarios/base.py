"""The scenario contract and the context a cell hands to it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..metrics import Measurement
from ..params import to_plain, validate_params


@dataclass(kw_only=True)
class CellContext:
    """What a scenario may use: the defended model, the data, the device, the seed, progress."""

    model: nn.Module
    loader: DataLoader
    device: torch.device
    seed: int
    num_classes: int
    defense_differentiable: bool = True
    amp: bool = False
    advance: Callable[[int], None] = lambda n: None

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(images, labels) on the device; reports one unit of progress per image."""
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            self.advance(len(y))

    def autocast(self) -> Any:
        """Mixed precision for forward-only scenarios when the suite asks for it."""
        enabled = self.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, enabled=enabled)


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """Base of scenarios: fields are YAML keys; `run` returns the cell's measurements."""

    kind: ClassVar[str]
    needs_gradients: ClassVar[bool] = False

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Scenario:
        """Validate YAML parameters into a scenario (pydantic errors carry field locations)."""
        return validate_params(cls, params)

    def to_params(self) -> dict[str, Any]:
        """Plain parameters: `from_params(to_params())` rebuilds the scenario."""
        return to_plain(self)

    def run(self, ctx: CellContext) -> list[Measurement]:
        """Evaluate and return measurements."""
        raise NotImplementedError
