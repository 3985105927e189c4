"""`transfer:compressed` — attacks between a model and its compressed versions (Parekh et al. 2022).

Variants: the model itself (`original`), each target compression (int8 dynamic quantization, global
magnitude pruning `pruneNN`) and, when `student:` names one, a distilled student. Adversarial images
are crafted once per source variant on its differentiable surrogate and evaluated on every variant:
a transfer matrix, one row per (source, target); the diagonal is the white-box attack. Crafted
images are cached on disk by content hash, so other cells with the same inputs reuse them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, ClassVar, Literal

import pandas as pd
import torch
from pydantic import Field
from torch import nn

from ..core.cache import atomic_path, cache_dir, file_lock
from ..core.cells import stable_hash
from ..core.errors import ScenarioNotApplicable
from ..core.metrics import Measurement, proportion, register_metric
from ..core.params import ParamError
from ..core.registry import ATTACKS, PLOTS, SCENARIOS
from ..models.compression import COMPRESSIONS, Compressed, compress, parse_target
from ..models.sources import split_source
from ..report import plots as pk
from .base import CellContext, PlanContext, Scenario, skip_reason

log = logging.getLogger(__name__)


register_metric("transfer_success_rate", higher_is_better=False, headline=True,
                description="Attack success rate of examples crafted on another model")


def load_crafted(path: Path, shape: torch.Size, device: torch.device | str) -> torch.Tensor | None:
    """The crafted images cached at `path`, or None when absent, unreadable or not shaped
    `shape` (then they are crafted again and the entry replaced)."""
    if not path.is_file():
        return None
    try:
        adv = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any damage means: craft again
        log.warning("unreadable crafted-examples cache entry %s (%s): crafting again", path, exc)
        return None
    if not isinstance(adv, torch.Tensor) or adv.shape != shape:
        log.warning("crafted-examples cache entry %s does not hold a %s tensor: crafting again",
                    path, tuple(shape))
        return None
    return adv


@SCENARIOS.register("transfer:compressed")
@dataclass(frozen=True, kw_only=True)
class CompressedTransfer(Scenario):
    """Transfer matrix between a model and its int8 / pruned / distilled versions (FGSM or PGD)."""

    kind: ClassVar[str] = "transfer"
    needs_gradients: ClassVar[bool] = True
    model_refs: ClassVar[tuple[str, ...]] = ("student",)
    name: Literal["compressed"] = "compressed"
    attack: Literal["pgd", "fgsm"] = "pgd"
    eps: Annotated[float, Field(ge=0, le=1)] = 8 / 255
    steps: Annotated[int, Field(ge=1)] = 10
    targets: list[str] = field(default_factory=lambda: ["int8", "prune30", "prune50", "prune70"])
    student: str | None = None
    reuse: bool = True
    cache: bool = True

    def check(self) -> None:
        for target in self.targets:
            if parse_target(target)[0] not in COMPRESSIONS:
                raise ParamError("targets", f"unknown compression {target!r}: use int8 or pruneNN "
                                            "(NN = percent of Linear weights), e.g. prune50")

    def unsupported(self, ctx: PlanContext) -> str | None:
        return skip_reason(lambda: self.check_applicable(ctx))

    def check_applicable(self, ctx: CellContext | PlanContext) -> None:
        """Skip for a non-differentiable defended model or a student of another model."""
        self.check_differentiable(ctx)
        self.check_student(ctx)

    @staticmethod
    def check_differentiable(ctx: CellContext | PlanContext) -> None:
        """Skip for a non-differentiable defended model."""
        if not ctx.defense_differentiable:
            raise ScenarioNotApplicable("compressing a non-differentiable defended model is not "
                                        "defined; evaluate the base model")

    def check_student(self, ctx: CellContext | PlanContext) -> None:
        """Skip unless the student was distilled from the evaluated model (checked for zoo
        recipes)."""
        if not self.student or ctx.model_config is None:
            return
        (mp, mname), (sp, sname) = (split_source(ctx.model_config.source),
                                    split_source(ctx.references["student"].source))
        if mp == sp == "zoo":
            from ..core.registry import ZOO

            if ZOO.get(sname).teacher != mname:
                raise ScenarioNotApplicable(f"{sname} is not distilled from {mname}")

    def variants(self, ctx: CellContext) -> dict[str, Compressed]:
        """name -> compressed model (original first, distilled student last when given)."""
        out = {"original": Compressed(target=ctx.model, surrogate=ctx.model, device=ctx.device)}
        out.update({t: compress(ctx.model, t) for t in self.targets})
        if self.student:
            student = ctx.reference("student")
            out["distilled"] = Compressed(target=student, surrogate=student, device=ctx.device)
        return out

    def craft(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int,
              batch_size: int) -> torch.Tensor:
        """Adversarial images crafted on `model`, batch by batch."""
        params = ({"eps": self.eps} if self.attack == "fgsm"
                  else {"eps": self.eps, "steps": self.steps})
        attack = ATTACKS.get(self.attack)(**params)
        return torch.cat([attack.perturb(model, x[i:i + batch_size], y[i:i + batch_size],
                                         seed=seed + i) for i in range(0, len(x), batch_size)])

    def crafted(self, ctx: CellContext, source: str, variant: Compressed, x: torch.Tensor,
                y: torch.Tensor) -> torch.Tensor:
        """Crafted images for `source`, from the content-addressed cache when present."""
        key = stable_hash([ctx.model_key, ctx.data_key, source, self.attack, self.eps, self.steps,
                           self.student and ctx.references["student"].fingerprint, ctx.seed], 24)
        batch_size = ctx.loader.batch_size or len(x)
        if not self.cache:
            return self.craft(variant.surrogate, x, y, ctx.seed, batch_size)
        path = cache_dir("transfer") / f"{key}.pt"
        with file_lock(path.with_suffix(".lock")):  # concurrent workers craft it once
            cached = load_crafted(path, x.shape, ctx.device)
            if cached is not None:
                return cached
            adv = self.craft(variant.surrogate, x, y, ctx.seed, batch_size)
            with atomic_path(path) as tmp:  # written whole or not at all
                torch.save(adv.cpu(), tmp)
        return adv

    def run(self, ctx: CellContext) -> list[Measurement]:
        self.check_applicable(ctx)
        batches = list(ctx.batches())
        x = torch.cat([b[0] for b in batches])
        y = torch.cat([b[1] for b in batches])
        variants = self.variants(ctx)
        correct = {name: predict(v, x) == y.cpu() for name, v in variants.items()}
        rows = [proportion("accuracy", int(c.sum()), len(y), target=name)
                for name, c in correct.items()]
        for source, variant in variants.items():
            adv = self.crafted(ctx, source, variant, x, y) if self.reuse else None
            for target, victim in variants.items():
                pair_adv = adv if adv is not None else self.craft(
                    variant.surrogate, x, y, ctx.seed, ctx.loader.batch_size or len(x))
                fooled = correct[target] & (predict(victim, pair_adv) != y.cpu())
                rows.append(proportion("transfer_success_rate", int(fooled.sum()),
                                       int(correct[target].sum()), source=source, target=target))
        return rows


@torch.no_grad()
def predict(variant: Compressed, x: torch.Tensor, chunk: int = 500) -> torch.Tensor:
    """Top-1 predictions of the deployed model (on its own device), on the CPU."""
    return torch.cat([variant.target(x[i:i + chunk].to(variant.device)).argmax(1).cpu()
                      for i in range(0, len(x), chunk)])


def transfer_heatmaps(table: pd.DataFrame) -> list[pk.Plot]:
    """Transfer success rate, source variant x target variant, one heatmap per model/defense."""
    rows = table[(table["metric"] == "transfer_success_rate")
                 & pk.has(table, lambda p: "source" in p and "target" in p)]
    rows = rows.assign(source=rows["p"].map(lambda p: str(p["source"])),
                       target=rows["p"].map(lambda p: str(p["target"])))
    return [pk.heatmap(f"{subject}: {scenario}", "Transfer",
                    "transfer success rate (%), rows: crafted on, columns: evaluated on",
                    group, "source", "target", ("crafted on", "evaluated on"))
            for (subject, scenario), group in rows.groupby(["subject", "scenario"], sort=False)]


PLOTS.register("transfer_heatmaps", transfer_heatmaps, order=50)
