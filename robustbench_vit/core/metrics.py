"""Metric definitions (direction, proportion, headline), measurements, Wilson intervals and
calibration error. Scenarios register the metrics they report with `register_metric`."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import RbvError
from .registry import FLAGS, METRICS

if TYPE_CHECKING:
    import torch


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
    flags: tuple[str, ...] = ()
    """Caveats on the number (attack-failure indicators that fired, see `audit.indicators`)."""
    examples: str | None = None
    """Per-example outcomes behind a proportion (`core.outcomes.ExampleBits.encode`)."""


@dataclass(frozen=True, kw_only=True)
class Flag:
    """A caveat a result row can carry (an attack-failure indicator...): its name and the
    sentence the leaderboard shows."""

    name: str
    explanation: str


def register_flag(name: str, explanation: str) -> Flag:
    """Register a flag's meaning (`rbv ls flags`); the same definition again is a no-op."""
    flag = Flag(name=name, explanation=explanation)
    FLAGS.register(name, flag, description=explanation)
    return flag


def register_metric(name: str, *, higher_is_better: bool, description: str,
                    proportion: bool = True, headline: bool = False) -> Metric:
    """Register a metric's meaning (the scenario that reports it calls this at import).

    Registering the same definition again is a no-op; a different one under a taken name is an
    error. Every metric a cell reports must be registered: an unknown one fails the cell.
    """
    metric = Metric(name=name, higher_is_better=higher_is_better, description=description,
                    proportion=proportion, headline=headline)
    METRICS.register(name, metric, description=description)
    return metric


class UnregisteredMetricError(RbvError):
    """A measurement or a stored row names a metric no loaded module registered."""

    exit_code = 2


def require_registered(metrics: Iterable[str]) -> None:
    """Raise UnregisteredMetricError naming every metric in `metrics` that is not registered."""
    unknown = sorted({str(m) for m in metrics if m not in METRICS})
    if unknown:
        raise UnregisteredMetricError(
            f"metric(s) no loaded module registered: {', '.join(unknown)} (a scenario registers "
            "the metrics it reports with robustbench_vit.api.register_metric; for stored rows, "
            "install the plugin that reported them)")


def metric_info(name: str) -> Metric:
    """The registered definition of `name` (UnknownNameError with suggestions otherwise)."""
    return METRICS.get(name)


ACCURACY = register_metric("accuracy", higher_is_better=True, headline=True,
                           description="Top-1 accuracy on clean inputs")
"""The one metric every scenario may report; the others are registered by their scenarios."""


def wilson_interval(successes: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
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
    import torch

    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in zip(edges[:-1], edges[1:], strict=False):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            ece += inside.float().mean() * (correct[inside].mean() - conf[inside].mean()).abs()
    return float(ece)


def paired_difference(only_first: int, only_second: int, n: int,
                      z: float = 1.959963984540054) -> tuple[float, float, float]:
    """Difference p1 - p2 of two proportions measured on the same n items, with its interval.

    `only_first`: items counted by the first measurement and not by the second; `only_second`:
    the reverse (McNemar's discordant pairs; concordant items do not move the difference). The
    interval is Agresti & Min's (2005) Wald interval after adding 1/2 to each cell of the 2x2
    table, so 0 discordant pairs still has a width. (0, -1, 1) when n == 0.
    """
    if n <= 0:
        return 0.0, -1.0, 1.0
    b, c, m = only_first + 0.5, only_second + 0.5, n + 2.0
    diff = (b - c) / m
    half = z * math.sqrt(max((b + c) - (b - c) ** 2 / m, 0.0)) / m
    return (only_first - only_second) / n, max(-1.0, diff - half), min(1.0, diff + half)
