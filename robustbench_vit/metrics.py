"""Metric vocabulary (with direction), measurements, Wilson intervals and calibration error."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .registry import METRICS


@dataclass(frozen=True, kw_only=True)
class Metric:
    """A metric name's meaning: direction (for sorting and gates) and whether it is a proportion."""

    name: str
    higher_is_better: bool
    description: str
    proportion: bool = True
    headline: bool = False


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """One number a scenario produced, with its sample size, interval and extra params.

    `scenario_name` names the row's scenario when one cell measures several (`corruption:fog`):
    the stored `scenario` becomes "kind:scenario_name" instead of the cell's label.
    """

    metric: str
    value: float
    n: int
    ci_low: float | None = None
    ci_high: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    scenario_name: str | None = None


_VOCABULARY = [
    ("accuracy", True, "Top-1 accuracy on clean inputs"),
    ("robust_accuracy", True, "Top-1 accuracy under attack (correct on clean and on adversarial)"),
    ("attack_success_rate", False, "Among clean-correct images, the fraction the attack flips"),
    ("transfer_success_rate", False, "Attack success rate of examples crafted on another model"),
    ("corruption_accuracy", True, "Top-1 accuracy on corrupted inputs"),
    ("mce", False, "Mean corruption error x100, relative to a baseline model"),
    ("relative_mce", False, "Relative mean corruption error x100 (clean error subtracted)"),
    ("shift_consistency", True, "How often predictions of two shifted copies agree"),
    ("shifted_accuracy", True, "Top-1 accuracy on shifted inputs"),
    ("order_accuracy", True, "Top-1 accuracy with the encoder blocks in a random order"),
    ("pruned_accuracy", True, "Top-1 accuracy with k encoder blocks removed"),
    ("certified_accuracy", True, "Fraction of images certified correct against the patch size"),
    ("smoothed_accuracy", True, "Top-1 accuracy of the smoothed (voting) classifier"),
    ("ece", False, "Expected calibration error over 15 equal-width confidence bins"),
]
HEADLINE = {"accuracy", "robust_accuracy", "transfer_success_rate", "corruption_accuracy", "mce",
            "shift_consistency", "order_accuracy", "pruned_accuracy", "certified_accuracy"}
for _name, _hib, _desc in _VOCABULARY:
    METRICS.register(_name, Metric(name=_name, higher_is_better=_hib, description=_desc,
                                   proportion=_name not in ("mce", "relative_mce", "ece"),
                                   headline=_name in HEADLINE),
                     description=_desc)


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (0, 1 when n == 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def proportion(metric: str, successes: int, n: int, **extra: Any) -> Measurement:
    """A proportion measurement with its Wilson interval."""
    low, high = wilson_interval(successes, n)
    value = successes / n if n else float("nan")
    return Measurement(metric=metric, value=value, n=n, ci_low=low, ci_high=high, extra=extra)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE: |accuracy - confidence| averaged over equal-width confidence bins, weighted by size."""
    conf, pred = probs.max(1)
    return calibration_error(conf, (pred == labels).float(), bins)


def calibration_error(conf: torch.Tensor, correct: torch.Tensor, bins: int = 15) -> float:
    """ECE from per-image top-1 confidences and 0/1 correctness (mergeable: concatenate them)."""
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in zip(edges[:-1], edges[1:], strict=False):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.float().mean() * (correct[inside].mean() - conf[inside].mean()).abs()
    return float(ece)
