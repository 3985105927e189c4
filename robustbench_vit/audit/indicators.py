"""Attack-failure indicators (after Pintor et al., "Indicators of Attack Failure", NeurIPS 2022):
checks run beside an attack cell that say when its robust accuracy may come from an attack that
could not work rather than from robustness.

Each indicator is computed once per cell on a small subset (the first `indicator_examples`
clean-correct images of the cell's first batch, so chunks and Ray give the same subset; a fixed
cost per cell, however large the cell), as integer counts turned into one stored row (value, n,
interval) plus a flag on every row of the cell when it fires. The costly checks attack only the
subset images the attack failed on: an image it fooled counts as fooled by the variant too (union,
as AutoAttack counts its attacks), so their paired differences have no opposite pairs.

- `unbounded`: the same attack at a budget that must win (L∞ eps 1 / the L2 diameter, from the
  clean image) leaves some subset image correct: masked gradients or a broken attack.
- `silent`: on subset images the attack failed on, its loss (on the view it attacked, with the same
  random draws at both points) did not increase: no progress. Skipped for attacks that return the
  clean image where they fail (`Attack.returns_clean_on_failure`: APGD, Square, AutoAttack) and for
  patch attacks (they replace pixels from a random patch: the clean image is not their start).
- `no_gradient`: the input gradient of the loss is zero or non-finite.
- `transfer`: the same attack crafted on the undefended base model and evaluated on the defended
  model leaves fewer subset images robust than the attack on the defended model (paired interval
  above 0): the white-box attack is weaker than a transfer, so it did not adapt.
- `not_converged`: twice the steps (or queries) leave fewer subset images robust (paired interval
  above 0).
- `randomized`: the defended model answers the same input differently on two forwards while the
  attack averaged no random draws (no EOT).
- `eot`: for such a model, the attack on the average of EOT_CHECK_SAMPLES draws per step leaves
  fewer subset images robust (paired interval above 0).

The cross-cell check (a score-based or transfer attack beats a gradient attack of the same threat
model) runs on the per-example outcomes in `audit.worst_case`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..core.components import Attack
from ..core.metrics import (
    Measurement,
    paired_difference,
    proportion,
    register_flag,
    register_metric,
)
from ..models.eot import EOTModel

SILENT_MAX = 0.1
"""`silent` fires when more than this fraction of the failed subset images (and at least two) had
no loss increase."""
NO_GRADIENT_MAX = 0.1
"""`no_gradient` fires when more than this fraction of the subset (and at least two images) has a
zero or non-finite input gradient (a confident image can saturate float32 cross-entropy alone)."""
JUDGE_OFFSET = 7919
"""Seed offset of the random draws a paired check judges with (apart from the attack's)."""
EOT_CHECK_SAMPLES = 16
"""Random draws per step of the `eot` indicator's attack (run only on a randomized model attacked
without EOT)."""
DEFAULT_EXAMPLES = 10
"""Subset size by default: the first clean-correct images of a cell's first batch."""


@dataclass(frozen=True, kw_only=True)
class Indicator:
    """One attack-failure indicator: the flag it raises, the metric of its stored row."""

    name: str
    metric: str
    explanation: str
    fires: Callable[[list[int], int], bool]
    """Whether the flag fires, from the merged counts and the EOT samples the attack used."""
    higher_is_better: bool = False
    paired: bool = False
    """Counts are (only_white_box_robust, only_other_robust, n): a paired difference, which fires
    when its interval lies above 0."""


INDICATORS: dict[str, Indicator] = {}


def _indicator(name: str, metric: str, explanation: str, *,
               fires: Callable[[list[int], int], bool] | None = None,
               higher_is_better: bool = False, paired: bool = False) -> Indicator:
    indicator = Indicator(name=name, metric=metric, explanation=explanation,
                          fires=fires or _paired_above_zero,
                          higher_is_better=higher_is_better, paired=paired)
    register_metric(metric, higher_is_better=higher_is_better, proportion=not paired,
                    description=f"Attack-failure indicator `{name}`: {explanation}")
    INDICATORS[name] = indicator
    register_flag(name, explanation)
    return indicator


def _paired_above_zero(counts: list[int], _eot: int) -> bool:
    only_white, only_other, n = counts
    return n > 0 and paired_difference(only_white, only_other, n)[1] > 0


def _share_above(limit: float) -> Callable[[list[int], int], bool]:
    return lambda counts, _eot: counts[0] >= 2 and counts[0] / counts[1] > limit


UNBOUNDED = _indicator(
    "unbounded", "unbounded_success_rate", higher_is_better=True,
    fires=lambda counts, _eot: counts[0] < counts[1],
    explanation="the attack at a budget that must win (L∞ eps 1 or the L2 diameter) did not "
                "fool every image: masked gradients or a broken attack")
SILENT = _indicator(
    "silent", "silent_failure_rate", fires=_share_above(SILENT_MAX),
    explanation="the attack's loss did not increase on images it failed on: no progress")
NO_GRADIENT = _indicator(
    "no_gradient", "zero_gradient_rate", fires=_share_above(NO_GRADIENT_MAX),
    explanation="zero or non-finite input gradients: the gradient attack had nothing to follow")
TRANSFER = _indicator(
    "transfer", "transfer_gap", paired=True,
    explanation="the same attack crafted on the undefended base model leaves lower robust "
                "accuracy than the attack on the defended model: it did not adapt")
NOT_CONVERGED = _indicator(
    "not_converged", "convergence_gap", paired=True,
    explanation="twice the steps (or queries) lower robust accuracy: the attack had not converged")
EOT = _indicator(
    "eot", "eot_gap", paired=True,
    explanation="averaging random draws per step (EOT) lowers robust accuracy: the attack "
                "followed single draws of a randomized model")
RANDOMIZED = _indicator(
    "randomized", "output_variability", fires=lambda counts, eot: counts[0] > 0 and eot <= 1,
    explanation="the defended model is randomized but the attack averaged no random draws (EOT)")

register_flag("not_differentiable",
              "the defense is not differentiable and declares no adaptive view: evaluated with "
              "a gradient attack only")

Counts = dict[str, list[int]]


@dataclass(kw_only=True)
class BatchProbe:
    """What the indicators need from one attacked batch."""

    attack: Attack
    model: nn.Module
    """The defended model (judges every adversarial image)."""
    view: nn.Module
    """The model the attack ran on (adaptive view, EOT wrapper)."""
    base: nn.Module | None
    """The undefended base model (None for an undefended cell)."""
    eot: int
    seed: int
    gradient: bool = True
    """A gradient attack: the gradient and transfer checks apply (not to score-based attacks)."""


def cell_counts(probe: BatchProbe, x: torch.Tensor, y: torch.Tensor,
                clean_correct: torch.Tensor, robust: torch.Tensor, x_adv: torch.Tensor,
                examples: int) -> Counts:
    """The indicator counts of a cell, from its first batch (attack outputs given): on the first
    `examples` clean-correct images, the subset."""
    idx = torch.nonzero(clean_correct).flatten()[:examples]
    counts: Counts = {}
    if not len(idx):
        return counts
    xs, ys, n = x[idx], y[idx], len(idx)
    # which subset images the attack failed on, judged with fixed draws of a randomized model;
    # the costly checks attack only those (an image the attack fooled stays fooled: union)
    held = _judge(probe.model, x_adv[idx], ys, probe.seed)
    varies = _varies(probe.model, xs, probe.seed)
    counts[RANDOMIZED.name] = [int(varies.sum()), n]
    if probe.gradient:
        counts[NO_GRADIENT.name] = [int(_no_gradient(probe.view, xs, ys, probe.seed).sum()), n]
    additive = probe.attack.threat_model() is not None  # a patch replaces pixels instead
    if held.any() and additive and not type(probe.attack).returns_clean_on_failure:
        before = _losses(probe.view, xs[held], ys[held], probe.seed)
        after = _losses(probe.view, x_adv[idx][held], ys[held], probe.seed)
        counts[SILENT.name] = [int((after <= before).sum()), int(held.sum())]
    unbounded = probe.attack.unbounded(xs[0].numel())
    if unbounded is not None:
        survived = _also_fooled(unbounded, probe.view, probe, xs, ys, held)
        counts[UNBOUNDED.name] = [n - int(survived.sum()), n]
    others = {NOT_CONVERGED.name: (probe.attack.stronger(), probe.view),
              TRANSFER.name: (probe.attack, probe.base)}
    if varies.any() and probe.eot <= 1 and probe.gradient:
        others[EOT.name] = (probe.attack, EOTModel(probe.view, EOT_CHECK_SAMPLES).eval())
    for name, (attack, target) in others.items():
        if attack is not None and target is not None:
            survived = _also_fooled(attack, target, probe, xs, ys, held)
            counts[name] = [int((held & ~survived).sum()), 0, n]
    return counts


def _also_fooled(attack: Attack, target: nn.Module, probe: BatchProbe, x: torch.Tensor,
                 y: torch.Tensor, held: torch.Tensor) -> torch.Tensor:
    """Which of the `held` images stay correct after `attack` crafted on `target` (the others:
    False); only the held images are attacked."""
    survived = torch.zeros_like(held)
    if held.any():
        survived[held] = _robust(attack, target, probe.model, x[held], y[held], probe.seed)
    return survived


def _robust(attack: Attack, target: nn.Module, judge: nn.Module, x: torch.Tensor,
            y: torch.Tensor, seed: int) -> torch.Tensor:
    """Which images `judge` still classifies correctly after `attack` crafted on `target`."""
    try:
        adv = attack.perturb(target.eval(), x, y, seed=seed).detach()
    finally:
        judge.eval()
        target.eval()
    return _judge(judge, adv, y, seed)


def _judge(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
    """Which images `model` classifies correctly, with fixed random draws (common to every arm of
    a paired check)."""
    with torch.no_grad():
        return _seeded(seed + JUDGE_OFFSET, lambda: model(x), x).argmax(1) == y


def _seeded(seed: int, fn: Callable[[], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """`fn()` with the global RNG seeded (common random draws for a randomized model), then
    restored."""
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return fn()


def _losses(view: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
    with torch.no_grad():
        logits = _seeded(seed, lambda: view(x), x)
    return nn.functional.cross_entropy(logits.float(), y, reduction="none")


def _no_gradient(view: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
    """Per image: the input gradient of the cross-entropy is all zero or has a non-finite value."""
    x = x.clone().requires_grad_(True)

    def grad() -> torch.Tensor:
        with torch.enable_grad():
            loss = nn.functional.cross_entropy(view(x).float(), y, reduction="sum")
            found = torch.autograd.grad(loss, x, allow_unused=True)[0] \
                if loss.requires_grad else None
        return torch.zeros_like(x) if found is None else found  # no path to x: no gradient

    flat = _seeded(seed, grad, x).flatten(1)
    return (flat == 0).all(1) | ~torch.isfinite(flat).all(1)


def _varies(model: nn.Module, x: torch.Tensor, seed: int) -> torch.Tensor:
    """Per image: two forwards of `model` (different random draws) give different outputs."""
    with torch.no_grad():
        first = _seeded(seed, lambda: model(x), x)
        second = _seeded(seed + 1, lambda: model(x), x)
    # beyond float noise (non-deterministic GPU reductions): a randomized defense moves far more
    same = torch.isclose(first.float(), second.float(), rtol=1e-3, atol=1e-4)
    return ~same.flatten(1).all(1)


def merge_counts(parts: list[Counts]) -> Counts:
    """Element-wise sums of the counts of consecutive chunks."""
    total: Counts = {}
    for part in parts:
        for name, values in part.items():
            have = total.setdefault(name, [0] * len(values))
            total[name] = [a + b for a, b in zip(have, values, strict=True)]
    return total


def indicator_rows(counts: Counts, eot: int) -> tuple[list[Measurement], list[str]]:
    """(one row per computed indicator, the names of those that fired) from merged counts."""
    rows: list[Measurement] = []
    fired: list[str] = []
    for name, values in counts.items():
        indicator = INDICATORS[name]
        if values[-1] == 0:
            continue
        if indicator.paired:
            value, low, high = paired_difference(*values)
            row = Measurement(metric=indicator.metric, value=value, n=values[-1], ci_low=low,
                              ci_high=high)
        else:
            row = proportion(indicator.metric, *values)
        if indicator.fires(values, eot):
            fired.append(name)
            row = replace(row, flags=(name,))
        rows.append(row)
    return rows, fired


def with_flags(rows: list[Measurement], flags: list[str]) -> list[Measurement]:
    """`rows` with `flags` added to each (no change when `flags` is empty)."""
    if not flags:
        return rows
    return [replace(r, flags=tuple(sorted({*r.flags, *flags}))) for r in rows]
