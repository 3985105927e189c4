"""`certify`: certified accuracy of a smoothed ViT against an m×m adversarial patch.

An m×m patch meets at most Δ = ceil((m + b − 1)/s) column ablations (Δ² for block ablations,
which need the patch to overlap in both directions), so it moves at most Δ votes. The scenario
counts Δ exactly on the wrapping ablation grid (`certificate_delta`): the same number when s divides
the image size, one more per axis where a stride that does not divide it leaves a short gap at the
wrap. An image is certified iff the smoothed prediction is the true label and
count_top − count_second > 2Δ.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, cast

import pandas as pd
import torch
from pydantic import Field
from torch import nn

from ..core.errors import ScenarioNotApplicable
from ..core.metrics import Measurement, proportion, register_metric
from ..core.registry import DEFENSES, PLOTS, SCENARIOS
from ..report import plots as pk
from .base import CellContext, PlanContext, Scenario, skip_reason

log = logging.getLogger(__name__)

register_metric("certified_accuracy", higher_is_better=True, headline=True,
                description="Fraction of images certified correct against the patch size")
register_metric("smoothed_accuracy", higher_is_better=True,
                description="Top-1 accuracy of the smoothed (voting) classifier")
register_metric("token_drop_speedup", higher_is_better=True, proportion=False,
                description="Wall time of the full masked forward over token dropping for the "
                            "same votes (certify with `speedup: true`; best of `repeats`)")


def affected_ablations(ablation: str, size: int, stride: int, patch: int) -> int:
    """Δ: how many ablation positions an m×m patch can reach (votes it can change)."""
    per_axis = math.ceil((patch + size - 1) / stride)
    return per_axis * per_axis if ablation == "block" else per_axis


def reachable_ablations(extent: int, size: int, stride: int, patch: int) -> int:
    """Exact per-axis Δ on a wrapping axis of `extent` pixels: the most bands one patch meets.

    Equals ceil((m + b − 1)/s) when s divides the extent (fewer once bands cover the axis); when
    it does not, the short gap across the wrap can let a patch meet one band more.
    """
    starts = range(0, extent, stride)
    best = 0
    for q in range(extent):
        hit = {(q + i) % extent for i in range(patch)}
        best = max(best, sum(any((p + j) % extent in hit for j in range(size)) for p in starts))
    return best


def certificate_delta(
    ablation: str, size: int, stride: int, patch: int, shape: tuple[int, int]
) -> int:
    """Δ for images of `shape` (H, W): the votes an m×m patch can change, never below the need."""
    cols = reachable_ablations(shape[1], size, stride, patch)
    return (
        cols * reachable_ablations(shape[0], size, stride, patch) if ablation == "block" else cols
    )


def required_margin(delta: int) -> int:
    """Smallest count_top − count_second that certifies against Δ changed votes: 2Δ + 1."""
    return 2 * delta + 1


def smoothed_prediction(votes: torch.Tensor) -> torch.Tensor:
    """Argmax of vote counts (B, classes), ties to the lower class index."""
    classes = torch.arange(votes.shape[1], device=votes.device).expand_as(votes)
    top = votes.max(1, keepdim=True).values
    return torch.where(votes == top, classes, votes.shape[1]).min(1).values


def certified(votes: torch.Tensor, labels: torch.Tensor, delta: int) -> torch.Tensor:
    """(B,) bool: prediction == label and count_top − count_second > 2Δ."""
    pred = smoothed_prediction(votes)
    top = votes.gather(1, pred[:, None]).squeeze(1)
    others = votes.scatter(1, pred[:, None], float("-inf"))
    second = others.max(1).values if votes.shape[1] > 1 else torch.zeros_like(top)
    return (pred == labels) & (top - second > 2 * delta)


def is_smoothing(defense: object) -> bool:
    """Whether `defense` is the registered `smoothing` defense."""
    return "smoothing" in DEFENSES.names() and type(defense) is DEFENSES.get("smoothing")


def require_smoothing(defense: object) -> None:
    """ScenarioNotApplicable unless `defense` is the smoothing defense."""
    if not is_smoothing(defense):
        name = type(defense).__name__ if defense is not None else "none"
        raise ScenarioNotApplicable(f"certify needs the smoothing defense, not {name}")


@SCENARIOS.register("certify")
@dataclass(frozen=True, kw_only=True)
class CertifyScenario(Scenario):
    """Certified accuracy against m×m patches for derandomized smoothing (`smoothing` defense)."""

    kind: ClassVar[str] = "certify"
    patch_size: Annotated[int, Field(ge=1)]
    speedup: bool = False
    """Also time the votes of the first batch both ways (full masked forward and token dropping),
    check they are identical, and report `token_drop_speedup` (Salman et al.'s ViT speed-up)."""
    repeats: Annotated[int, Field(ge=1)] = 3
    """Timings per path for `speedup` (the best of each is compared)."""

    def unsupported(self, ctx: PlanContext) -> str | None:
        return skip_reason(lambda: require_smoothing(ctx.defense))

    @torch.no_grad()
    def run(self, ctx: CellContext) -> list[Measurement]:
        require_smoothing(ctx.defense)
        defense = ctx.defense
        # the smoothing defense's model: its base classifier is the unablated model with the same
        # head as the votes (both heads of a distilled DeiT)
        base_classifier = getattr(ctx.model, "base_classifier", None)
        if not callable(base_classifier):
            raise ScenarioNotApplicable(
                f"certify needs the smoothed model the smoothing defense built, not "
                f"{type(ctx.model).__name__}")
        base = cast(Callable[[], nn.Module], base_classifier)().eval()
        n = n_smoothed = n_certified = n_base = 0
        speedup: list[Measurement] = []
        for i, (x, y) in enumerate(ctx.batches()):
            if self.speedup and i == 0:
                speedup = [m for m in [token_drop_speedup(ctx.model, x, self.repeats)] if m]
            delta = certificate_delta(
                defense.ablation, defense.size, defense.stride, self.patch_size,
                (x.shape[-2], x.shape[-1]),
            )
            votes = ctx.model(x)
            n += len(y)
            n_smoothed += int((smoothed_prediction(votes) == y).sum())
            n_certified += int(certified(votes, y, delta).sum())
            n_base += int((base(x).argmax(1) == y).sum())
        return [
            proportion("smoothed_accuracy", n_smoothed, n),
            proportion("certified_accuracy", n_certified, n),
            proportion("accuracy", n_base, n, model="base"),
            *speedup,
        ]


def token_drop_speedup(smoothed: nn.Module, x: torch.Tensor,
                       repeats: int) -> Measurement | None:
    """Best-of-`repeats` wall time of the full masked forward over that of token dropping, for
    the votes of `x`, after one warm-up call each; the two paths must give the same votes (an
    error otherwise). None (and a
    warning) for a model without a token-dropping path: no row rather than a ratio of 1."""
    model: Any = smoothed
    if not getattr(model, "tokens", False):
        log.warning("certify speedup: %s has no token-dropping path (%s)",
                    type(model.backbone).__name__, model.token_reason)
        return None
    # a first, untimed call per path (warm-up) gives the votes compared
    votes = {dropping: model.votes(x, token_dropping=dropping) for dropping in (False, True)}
    times: dict[bool, float] = {True: math.inf, False: math.inf}
    for _ in range(repeats):
        for dropping in (False, True):  # interleaved, so load changes hit both paths alike
            start = time.perf_counter()
            model.votes(x, token_dropping=dropping)
            times[dropping] = min(times[dropping], time.perf_counter() - start)
    if not torch.equal(votes[True], votes[False]):
        raise RuntimeError("token dropping changed the votes of the smoothed model: it is not "
                           "exact for this model")
    return Measurement(metric="token_drop_speedup", value=times[False] / times[True],
                       n=len(x))


CERTIFY_METRICS = {"certified_accuracy": "certified accuracy",
                   "smoothed_accuracy": "smoothed accuracy"}


def certify_bars(table: pd.DataFrame) -> list[pk.Plot]:
    """Certified vs smoothed accuracy per model/defense (grouped bars), per certify setting."""
    rows = table[(table["scenario"] == "certify") & table["metric"].isin(CERTIFY_METRICS)]
    rows = rows.assign(setting=rows["p"].map(lambda p: pk.without(p)))
    settings = [json.loads(s) for s in rows["setting"].unique()]
    plots = []
    for setting, group in rows.groupby("setting", sort=False):
        subjects = list(dict.fromkeys(group["subject"]))
        bars = []
        for metric, name in CERTIFY_METRICS.items():
            found = {s: r for s, (_, r) in zip(group["subject"], group.iterrows(), strict=True)
                     if r["metric"] == metric}
            bars.append({"name": name, "full": name, "points": [
                pk.point(found[s], i, s) if s in found else None for i, s in enumerate(subjects)]})
        params = json.loads(cast(str, setting))
        shown = pk.varying_text(settings, params)
        title = " ".join(x for x in ("certify", shown) if x)
        patch = params.get("patch_size")
        plots.append({"kind": "bars", "section": "Certification", "title": title,
                      "subtitle": (f"patch {patch}×{patch}; " if patch else "") + pk.CI_NOTE,
                      "y_label": "accuracy (%)", "percent": True, "groups": subjects,
                      "series": bars})
    return plots


PLOTS.register("certify_bars", certify_bars, order=40)
