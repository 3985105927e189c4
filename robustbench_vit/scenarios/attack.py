"""`attack`: run a registered attack on clean-correct images; robust accuracy and success rate."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, ClassVar, cast

import pandas as pd
import torch
from torch import nn

from ..core.components import Attack
from ..core.errors import RbvError, ScenarioNotApplicable, UnsupportedModel
from ..core.metrics import Measurement, proportion, register_metric
from ..core.params import ParamError, to_plain, validate_params
from ..core.registry import ATTACKS, PLOTS, SCENARIOS
from ..models.eot import EOTModel
from ..report import plots as pk
from .base import CellContext, PlanContext, Scenario

BUDGET_TOLERANCE = 1e-5
NOT_DIFFERENTIABLE = "defense not differentiable: evaluated with a gradient attack only"


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
    """Adversarial attack by name (`rbv ls attacks`): robust accuracy, attack success rate."""

    kind: ClassVar[str] = "attack"
    needs_gradients: ClassVar[bool] = True
    name: str
    attack: Attack
    eot: int = 1

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> AttackScenario:
        params = dict(params)
        eot = params.pop("eot", 1)
        if not isinstance(eot, int) or isinstance(eot, bool) or eot < 1:
            raise ParamError("eot", f"expected a number of EOT samples >= 1, got {eot!r}")
        if "name" not in params:
            raise ValueError("an attack scenario needs `name:` (see `rbv ls attacks`)")
        name = params.pop("name")
        if not isinstance(name, str):
            raise ParamError("name", f"expected an attack name (`rbv ls attacks`), got {name!r}")
        return cls(name=name, attack=validate_params(ATTACKS.get(name), params), eot=eot)

    def to_params(self) -> dict[str, Any]:
        eot = {"eot": self.eot} if self.eot != 1 else {}
        return {"name": self.name, **to_plain(self.attack), **eot}

    chunkable: ClassVar[bool] = True  # attacks draw randomness from the seed of each batch

    def unsupported(self, ctx: PlanContext) -> str | None:
        return self.attack.unsupported(ctx.model)

    def run(self, ctx: CellContext) -> list[Measurement]:
        return self.merge([self.partial(ctx)])

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
        # gradient attacks on a non-differentiable defense go through its differentiable view;
        # score-based attacks query the defended model itself
        surrogate = ctx.attack_model if self.attack.needs_gradients else None
        view = surrogate if surrogate is not None else ctx.model
        view = EOTModel(view, self.eot).eval() if self.eot > 1 else view
        for i, (x, y) in enumerate(ctx.batches(), start=ctx.first_batch):
            clean_correct, robust, _ = attack_batch(ctx.model, self.attack, x, y, ctx.seed + i,
                                                    stats, attack_model=view)
            n += len(y)
            n_correct += int(clean_correct.sum())
            n_robust += int(robust.sum())
        flag = (self.attack.needs_gradients and not ctx.defense_differentiable
                and ctx.attack_model is None)
        return {"n": n, "correct": n_correct, "robust": n_robust, "stats": stats, "flag": flag}

    def merge(self, parts: list[dict[str, Any]]) -> list[Measurement]:
        """The cell's rows from the counts of its chunks. A rate over no attacked image (the
        success rate when no image was clean-correct) is not reported: it would be a number of 0
        trials; robust accuracy (0 of n then) is still exact."""
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
        if any(p["flag"] for p in parts):
            rows = [replace(r, extra={**r.extra, "flag": NOT_DIFFERENTIABLE}) for r in rows]
        return rows


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
