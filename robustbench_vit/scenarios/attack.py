"""`attack`: run a registered attack on clean-correct images; robust accuracy and success rate."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal, cast

import pandas as pd
import torch
from torch import nn

from ..audit import worst_case  # noqa: F401  (registers the worst case and its flags)
from ..audit.indicators import (
    DEFAULT_EXAMPLES,
    BatchProbe,
    Counts,
    cell_counts,
    indicator_rows,
    merge_counts,
    with_flags,
)
from ..core.components import Attack
from ..core.errors import RbvError, ScenarioNotApplicable, UnsupportedModel
from ..core.metrics import Measurement, proportion, register_metric
from ..core.params import ParamError, validate_params
from ..core.registry import ATTACKS, PLOTS, SCENARIOS
from ..models.eot import EOTModel
from ..report import plots as pk
from .base import CellContext, PlanContext, Scenario, joined_outcomes

BUDGET_TOLERANCE = 1e-5
UNDEFENDED_TRANSFER = ("source: base crafts the attack on the undefended model, which is this "
                       "cell's model: the white-box attack already measures it")
NOT_DIFFERENTIABLE = "not_differentiable"
"""Flag of a gradient attack's rows on a non-differentiable defense without an adaptive view."""


register_metric("robust_accuracy", higher_is_better=True, headline=True,
                description="Top-1 accuracy under attack (correct on clean and on adversarial)")
register_metric("attack_success_rate", higher_is_better=False,
                description="Among clean-correct images, the fraction the attack flips")


class AttackContractError(RbvError):
    """An attack returned images outside [0,1] or outside its budget: its numbers cannot be
    trusted."""


def check_budget(attack: Attack, x: torch.Tensor, x_adv: torch.Tensor) -> None:
    """Raise AttackContractError unless x_adv is in [0,1], shaped like x and inside the threat
    model."""
    name = type(attack).__name__
    if x_adv.shape != x.shape:
        raise AttackContractError(
            f"{name} changed the shape {tuple(x.shape)} -> {tuple(x_adv.shape)}")
    if not torch.isfinite(x_adv).all():
        raise AttackContractError(f"{name} returned non-finite pixels")
    if x_adv.min() < -BUDGET_TOLERANCE or x_adv.max() > 1 + BUDGET_TOLERANCE:
        raise AttackContractError(
            f"{name} left [0,1]: [{float(x_adv.min())}, {float(x_adv.max())}]")
    threat = attack.threat_model()
    if threat is None:
        return
    norm, eps = threat
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "Linf" else delta.norm(dim=1)
    if len(size) and float(size.max()) > eps * (1 + 1e-4) + BUDGET_TOLERANCE:
        raise AttackContractError(f"{name} exceeded its {norm} budget {eps}: {float(size.max())}")


def attack_batch(
    model: nn.Module, attack: Attack, x: torch.Tensor, y: torch.Tensor, seed: int,
    stats: dict[str, list[int]] | None = None, attack_model: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clean_correct, robust, x_adv): attacks only clean-correct images; others keep x.

    `robust` is correct on clean AND adversarial input, so robust accuracy never exceeds clean.
    Proportions the attack measures itself are added into `stats` ({metric: [successes, n]}).
    The attack runs on `attack_model` (an EOT or surrogate view) when given; `model` judges it.
    """
    with torch.no_grad():
        clean_correct = model(x).argmax(1) == y
    x_adv = x.clone()
    robust = torch.zeros_like(clean_correct)
    idx = torch.nonzero(clean_correct).flatten()
    problem = attack.budget_problem(x[0].numel()) if len(x) else None
    if problem is not None:  # an L2 eps above the images' diameter: refused before it runs
        raise ParamError("eps", problem)
    if len(idx):
        target = attack_model if attack_model is not None else model
        try:
            adv, own = attack.perturb_with_stats(target.eval(), x[idx], y[idx], seed=seed)
        finally:  # attack libraries may leave a wrapper (and so the model) in training mode
            model.eval()
            target.eval()
        adv = adv.detach()
        check_budget(attack, x[idx], adv)
        for metric, (hits, total) in own.items():
            counts = (stats if stats is not None else {}).setdefault(metric, [0, 0])
            counts[0], counts[1] = counts[0] + hits, counts[1] + total
        x_adv[idx] = adv
        with torch.no_grad():
            robust[idx] = model(adv).argmax(1) == y[idx]
    return clean_correct, robust, x_adv


@SCENARIOS.register("attack")
@dataclass(frozen=True, kw_only=True)
class AttackScenario(Scenario):
    """Adversarial attack by name (`rbv ls attacks`): robust accuracy, attack success rate, and
    the attack-failure indicators (`audit.indicators`) with their flags.

    Gradient attacks run on the defense's adaptive view (`Defense.attack_view`), averaged over
    max(`eot`, `Defense.eot_samples()`) random draws per step; the defended model judges.
    """

    kind: ClassVar[str] = "attack"
    needs_gradients: ClassVar[bool] = True
    name: str
    attack: Attack
    eot: int = 1
    source: Literal["defended", "base"] = "defended"
    """"base": a transfer attack, crafted on the undefended base model and judged by the defended
    one (a black-box reference for the worst case and the `blackbox_beats_whitebox` flag)."""
    indicators: bool = True
    """Run the attack-failure indicators (on `indicator_examples` images of the first batch)."""
    indicator_examples: int = DEFAULT_EXAMPLES

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> AttackScenario:
        params = dict(params)
        eot = params.pop("eot", 1)
        if not isinstance(eot, int) or isinstance(eot, bool) or eot < 1:
            raise ParamError("eot", f"expected a number of EOT samples >= 1, got {eot!r}")
        source = params.pop("source", "defended")
        if source not in ("defended", "base"):
            raise ParamError("source", f"expected defended or base, got {source!r}")
        indicators = params.pop("indicators", True)
        if not isinstance(indicators, bool):
            raise ParamError("indicators", f"expected true or false, got {indicators!r}")
        examples = params.pop("indicator_examples", DEFAULT_EXAMPLES)
        if isinstance(examples, bool) or not isinstance(examples, int) or examples < 1:
            raise ParamError("indicator_examples",
                             f"expected a number of images >= 1, got {examples!r}")
        if "name" not in params:
            raise ValueError("an attack scenario needs `name:` (see `rbv ls attacks`)")
        name = params.pop("name")
        if not isinstance(name, str):
            raise ParamError("name", f"expected an attack name (`rbv ls attacks`), got {name!r}")
        attack = validate_params(ATTACKS.get(name), params)
        problem = attack.budget_problem()  # every attack: no L∞ eps above 1, no infinite eps
        if problem is not None:
            raise ParamError("eps", problem)
        return cls(name=name, attack=attack, eot=eot, source=source, indicators=indicators,
                   indicator_examples=examples)

    def to_params(self) -> dict[str, Any]:
        options = {"eot": (self.eot, 1), "source": (self.source, "defended"),
                   "indicators": (self.indicators, True),
                   "indicator_examples": (self.indicator_examples, DEFAULT_EXAMPLES)}
        return {"name": self.name, **self.attack.key_params(),
                **{k: v for k, (v, default) in options.items() if v != default}}

    chunkable: ClassVar[bool] = True  # attacks draw randomness from the seed of each batch

    def unsupported(self, ctx: PlanContext) -> str | None:
        if self.source == "base" and (ctx.defense is None or ctx.defense.is_identity()):
            return UNDEFENDED_TRANSFER
        return self.attack.unsupported(ctx.model)

    def run(self, ctx: CellContext) -> list[Measurement]:
        return self.merge([self.partial(ctx)])

    def eot_samples(self, ctx: CellContext) -> int:
        """The EOT samples per step: the suite's `eot`, raised to what the defense declares."""
        declared = ctx.defense.eot_samples() if ctx.defense is not None else 1
        return max(self.eot, declared)

    def partial(self, ctx: CellContext) -> dict[str, Any]:
        """Counts over the images of `ctx.loader`; batch i of the cell attacks with seed + i."""
        if ctx.num_classes < type(self.attack).min_classes:
            raise ScenarioNotApplicable(
                f"{self.name} needs at least {type(self.attack).min_classes} "
                f"classes; this task has {ctx.num_classes}")
        reason = self.attack.unsupported(ctx.model)  # whatever the data: a skip is not data-bound
        if reason is not None:
            raise UnsupportedModel(reason)
        n = n_correct = n_robust = 0
        stats: dict[str, list[int]] = {}
        counts: list[Counts] = []
        robust_bits: list[torch.Tensor] = []
        gradient = self.attack.needs_gradients
        # gradient attacks on a defense go through its adaptive view; score-based attacks query
        # the defended model itself
        surrogate = ctx.attack_model if gradient else None
        view = surrogate if surrogate is not None else ctx.model
        eot = self.eot_samples(ctx) if gradient else 1
        view = EOTModel(view, eot).eval() if eot > 1 else view
        base = self._base_model(ctx) if gradient or self.source == "base" else None
        transfer = self.source == "base"
        if transfer:  # crafted on the undefended model; the indicators judge white-box attacks
            if base is None:
                raise ScenarioNotApplicable(UNDEFENDED_TRANSFER)
            view, eot = base, 1
        for i, (x, y) in enumerate(ctx.batches(), start=ctx.first_batch):
            clean_correct, robust, x_adv = attack_batch(ctx.model, self.attack, x, y,
                                                        ctx.seed + i, stats, attack_model=view)
            n += len(y)
            n_correct += int(clean_correct.sum())
            n_robust += int(robust.sum())
            robust_bits.append(robust.cpu())
            if self.indicators and not transfer and i == 0:  # the cell's first batch
                probe = BatchProbe(attack=self.attack, model=ctx.model, view=view, base=base,
                                   eot=eot, seed=ctx.seed + i, gradient=gradient)
                counts.append(cell_counts(probe, x, y, clean_correct, robust, x_adv,
                                          self.indicator_examples))
        flag = (gradient and not transfer and not ctx.defense_differentiable
                and ctx.attack_model is None)
        examples = ctx.outcomes(torch.cat(robust_bits)) if robust_bits else None
        return {"n": n, "correct": n_correct, "robust": n_robust, "stats": stats, "flag": flag,
                "indicators": merge_counts(counts), "eot": eot, "examples": examples}

    @staticmethod
    def _base_model(ctx: CellContext) -> nn.Module | None:
        """The undefended base model of a defended cell (for the transfer indicator)."""
        if ctx.load_model is None or ctx.model_config is None:
            return None
        base = ctx.load_model(ctx.model_config)
        return None if base is ctx.model else base.eval()

    def merge(self, parts: list[dict[str, Any]]) -> list[Measurement]:
        """The cell's rows from the counts of its chunks. A rate over no attacked image (the
        success rate when no image was clean-correct) is not reported: it would be a number of 0
        trials; robust accuracy (0 of n then) is still exact. Every row carries the flags of the
        indicators that fired."""
        n, n_correct, n_robust = (sum(p[k] for p in parts) for k in ("n", "correct", "robust"))
        stats: dict[str, list[int]] = {}
        for part in parts:
            for metric, (hits, total) in part["stats"].items():
                counts = stats.setdefault(metric, [0, 0])
                counts[0], counts[1] = counts[0] + hits, counts[1] + total
        measured = {
            "robust_accuracy": (n_robust, n),
            "attack_success_rate": (n_correct - n_robust, n_correct),
            **{metric: (hits, total) for metric, (hits, total) in stats.items()},
        }
        rows = [proportion(metric, hits, total) for metric, (hits, total) in measured.items()
                if total > 0]
        examples = [p["examples"] for p in parts if p["examples"] is not None]
        if examples:
            rows = [replace(r, examples=joined_outcomes(examples))
                    if r.metric == "robust_accuracy" else r for r in rows]
        audit, fired = indicator_rows(merge_counts([p["indicators"] for p in parts]),
                                      max(p["eot"] for p in parts))
        if any(p["flag"] for p in parts):
            fired = [*fired, NOT_DIFFERENTIABLE]
        return with_flags(rows, fired) + audit

def attack_curves(table: pd.DataFrame) -> list[pk.Plot]:
    """Robust accuracy vs eps, one line per model/defense, for every attack swept over eps."""
    rows = table[table["scenario"].str.startswith("attack:")
                 & (table["metric"] == "robust_accuracy")]
    rows = rows[pk.has(rows, lambda p: isinstance(p.get("eps"), (int, float)))]
    rows = rows.assign(curve=rows["p"].map(lambda p: pk.without(p, "eps")))
    plots = []
    for scenario, in_scenario in rows.groupby("scenario", sort=False):
        others = [json.loads(c) for c in in_scenario["curve"].unique()]
        for curve, group in in_scenario.groupby("curve", sort=False):
            if group["p"].map(lambda p: p["eps"]).nunique() < 2:
                continue
            params = json.loads(cast(str, curve))
            norm = params.get("norm")
            shown = pk.varying_text(others, params)
            plots.append({
                "kind": "line", "section": "Adversarial attacks",
                "title": " ".join(x for x in (str(scenario), shown) if x),
                "subtitle": f"robust accuracy vs ε; {pk.CI_NOTE}",
                "x_label": f"ε ({norm})" if norm else "ε", "y_label": "robust accuracy (%)",
                "percent": True,
                "series": pk.series_by_subject(group, lambda r: pk.point(r, r["p"]["eps"]))})
    return plots


PLOTS.register("attack_curves", attack_curves, order=10)
