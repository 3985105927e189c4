"""`transfer:dta` — the Downstream Transfer Attack (Zheng et al. 2024).

The attacker holds only the public pre-trained ViT (`source`); the victim is the evaluated model,
fine-tuned from it on a task the attacker does not know. Adversarial images are crafted on the
source by L∞ PGD (random start) *minimizing* the cosine similarity between the block-`layer` tokens
of x' and x, averaged over tokens, then the victim is evaluated on them. `layer: auto` picks the
block whose attack moves the source's final (pre-logits) features furthest on a held-out slice
[choice: that measure]. Baselines in the same cell: PGD through the source's own head, the feature
loss at the last block, and random sign noise of the same eps; with `surrogate:` (a model the
attacker fine-tuned from the source on labelled downstream data of its own) also PGD through the
surrogate's head on the victim's true labels — a stronger attacker than DTA's, who knows the task.
Blocks are numbered over every stage in execution order (the family adapter's feature blocks:
Swin's stages one after the other, CaiT's class-attention blocks last).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..core.errors import ScenarioNotApplicable
from ..core.metrics import Measurement, proportion, register_metric
from ..core.registry import ATTACKS, SCENARIOS
from ..models.sources import split_source
from ..models.vit import capture_block_outputs, num_blocks
from .base import CellContext, PlanContext, Scenario, skip_reason

log = logging.getLogger(__name__)

Craft = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
"""craft(images, true labels, seed) -> adversarial images (only the surrogate reads the labels)."""


register_metric("transfer_success_rate", higher_is_better=False, headline=True,
                description="Attack success rate of examples crafted on another model")


def feature_attack(source: nn.Module, x: torch.Tensor, layer: int, eps: float, alpha: float,
                   steps: int, seed: int) -> torch.Tensor:
    """L∞ PGD from a random start minimizing the mean token cosine similarity at block `layer`."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    with capture_block_outputs(source, [layer]) as feats:
        with torch.no_grad():
            source(x)
            clean = next(iter(feats.values())).detach()
        start = (torch.rand(x.shape, generator=gen, device=x.device) * 2 - 1) * eps
        x_adv = (x + start).clamp(0, 1)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            source(x_adv)
            loss = F.cosine_similarity(next(iter(feats.values())), clean, dim=-1).mean()
            grad, = torch.autograd.grad(loss, x_adv)
            x_adv = x_adv.detach() - alpha * grad.sign()
            x_adv = (x + (x_adv - x).clamp(-eps, eps)).clamp(0, 1)
    return x_adv.detach()


def pre_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The pooled features before the classifier head."""
    timm_model: Any = model  # duck-typed: a timm model, or a NormalizedModel around one
    backbone = getattr(timm_model, "backbone", timm_model)
    if hasattr(timm_model, "mean"):  # NormalizedModel: normalize as its forward does
        x = (x - timm_model.mean) / timm_model.std
    return backbone.forward_head(backbone.forward_features(x), pre_logits=True)


def random_noise(x: torch.Tensor, eps: float, seed: int) -> torch.Tensor:
    """x + eps·(random signs), clipped to [0,1]: the no-information baseline."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    signs = torch.randint(0, 2, x.shape, generator=gen, device=x.device).float() * 2 - 1
    return (x + eps * signs).clamp(0, 1)


def check_input_size(source: nn.Module, size: tuple[int, ...], role: str = "source") -> None:
    """Skip when the source (or surrogate) model takes images of another size than the evaluated
    data."""
    expected = tuple(getattr(source, "data_config", {}).get("input_size", ())[-2:])
    if expected and expected != size:
        raise ScenarioNotApplicable(
            f"the DTA {role} takes {expected[0]}x{expected[1]} images; this cell's data are "
            f"{size[0]}x{size[1]}")


@SCENARIOS.register("transfer:dta")
@dataclass(frozen=True, kw_only=True)
class DTAScenario(Scenario):
    """Downstream Transfer Attack: feature PGD on the pre-trained source, fine-tuned victim."""

    kind: ClassVar[str] = "transfer"
    model_refs: ClassVar[tuple[str, ...]] = ("source", "surrogate")
    unkeyed_defaults: ClassVar[dict[str, Any]] = {"surrogate": None}
    name: Literal["dta"] = "dta"
    source: str
    surrogate: str | None = None
    """A model the attacker fine-tuned on the downstream task (a suite model or a source): adds
    method `pgd_surrogate`, PGD through its head on the victim's true labels."""
    eps: Annotated[float, Field(ge=0, le=1)] = 8 / 255
    steps: Annotated[int, Field(ge=1)] = 10
    alpha: Annotated[float, Field(gt=0)] | None = None
    layer: Literal["auto"] | int = "auto"
    selection_examples: Annotated[int, Field(ge=1)] = 64
    baselines: bool = True
    report_layers: bool = False

    def step_size(self) -> float:
        """alpha, or eps/4 [choice]."""
        return self.alpha if self.alpha is not None else self.eps / 4

    def unsupported(self, ctx: PlanContext) -> str | None:
        return skip_reason(lambda: self.check_lineage(ctx))

    def check_lineage(self, ctx: CellContext | PlanContext) -> None:
        """Skip unless the evaluated model is fine-tuned from the source, where that is known:
        a zoo recipe's lineage, and a zoo recipe is never fine-tuned from a timm:/file: source
        (recipes start from scratch or from another recipe). Other victims are taken on trust."""
        source, model = ctx.references["source"], ctx.model_config
        if model is None or model.fingerprint == source.fingerprint:
            raise ScenarioNotApplicable("the evaluated model is the DTA source itself")
        surrogate = ctx.references.get("surrogate")
        if surrogate is not None and model.fingerprint == surrogate.fingerprint:
            raise ScenarioNotApplicable("the evaluated model is the DTA surrogate itself (PGD "
                                        "through it would be white-box, not a transfer)")
        (mp, mname), (sp, sname) = split_source(model.source), split_source(source.source)
        if mp == "zoo" and sp != "zoo":
            raise ScenarioNotApplicable(
                f"{model.name} is a zoo recipe: it is not fine-tuned from the {sp}: source "
                f"{source.name}")
        if mp == sp == "zoo":
            from ..models.zoo import recipe_lineage

            if sname not in recipe_lineage(mname)[1:]:
                raise ScenarioNotApplicable(f"{model.name} is not fine-tuned from {sname}")

    def select_layer(self, ctx: CellContext, source: nn.Module) -> tuple[int, list[float]]:
        """The block whose attack lowers the source's pre-logits cosine similarity most."""
        x, _ = ctx.heldout_batch(self.selection_examples)
        with torch.no_grad():
            clean = pre_logits(source, x)
        scores = []
        for layer in range(num_blocks(source)):
            adv = feature_attack(source, x, layer, self.eps, self.step_size(), self.steps, ctx.seed)
            with torch.no_grad():
                scores.append(float(F.cosine_similarity(pre_logits(source, adv), clean).mean()))
        return int(torch.tensor(scores).argmin()), scores

    def run(self, ctx: CellContext) -> list[Measurement]:
        self.check_lineage(ctx)
        source = ctx.reference("source")
        check_input_size(source, tuple(ctx.loader.dataset[0][0].shape[-2:]))
        surrogate = self.surrogate_pgd(ctx) if self.surrogate is not None else None
        blocks = num_blocks(source)
        layer = self.layer if self.layer != "auto" else self.select_layer(ctx, source)[0]
        if not -blocks <= layer < blocks:
            raise ValueError(f"layer {layer} out of range: the source has {blocks} blocks")
        methods = self.methods(source, layer % blocks, blocks)
        if surrogate is not None:
            methods["pgd_surrogate"] = surrogate
        counts = {m: 0 for m in methods}
        n_correct = 0
        for i, (x, y) in enumerate(ctx.batches()):
            with torch.no_grad():
                correct = ctx.model(x).argmax(1) == y
            x, y = x[correct], y[correct]
            n_correct += len(y)
            if not len(y):
                continue
            for method, craft in methods.items():
                adv = craft(x, y, ctx.seed + i)
                with torch.no_grad():
                    counts[method] += int((ctx.model(adv).argmax(1) != y).sum())
        return [proportion("transfer_success_rate", counts[m], n_correct, method=m.split("@")[0],
                           attack_layer=_layer_of(m, layer % blocks))
                for m in methods]

    def methods(self, source: nn.Module, layer: int, blocks: int) -> dict[str, Craft]:
        """name -> craft(x, y, seed): DTA at `layer`, and the baselines / per-layer variants asked
        for."""
        eps, alpha, steps = self.eps, self.step_size(), self.steps

        def at(block: int) -> Craft:
            return lambda x, y, seed: feature_attack(source, x, block, eps, alpha, steps, seed)

        out: dict[str, Craft] = {"dta": at(layer)}
        if self.baselines:
            pgd = self.pgd()

            def source_head(x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
                with torch.no_grad():
                    label = source(x).argmax(1)  # the source's head knows another task
                return pgd.perturb(source, x, label, seed=seed)

            out["pgd_source_head"] = source_head
            out[f"feature_last@{blocks - 1}"] = at(blocks - 1)
            out["random_noise"] = lambda x, y, seed: random_noise(x, eps, seed)
        if self.report_layers:
            out.update({f"dta_layer@{b}": at(b) for b in range(blocks)})
        return out

    def pgd(self) -> Any:
        """L∞ PGD with the scenario's eps, steps and step size."""
        return ATTACKS.get("pgd")(eps=self.eps, steps=self.steps, alpha=self.step_size())

    def surrogate_pgd(self, ctx: CellContext) -> Craft:
        """craft(x, y, seed): PGD through the surrogate's own head on the true labels `y` (the
        attacker labelled downstream data); the surrogate must predict the victim's classes."""
        surrogate = ctx.reference("surrogate")
        first = ctx.loader.dataset[0][0]
        check_input_size(surrogate, tuple(first.shape[-2:]), "surrogate")
        with torch.no_grad():
            classes = surrogate(first[None].to(ctx.device)).shape[1]
        if classes != ctx.num_classes:
            raise ScenarioNotApplicable(
                f"the surrogate predicts {classes} classes; this cell's task has "
                f"{ctx.num_classes}: it must be fine-tuned on the victim's task")
        pgd = self.pgd()
        return lambda x, y, seed: pgd.perturb(surrogate, x, y, seed=seed)


def _layer_of(method: str, layer: int) -> int | None:
    if "@" in method:
        return int(method.split("@")[1])
    return layer if method == "dta" else None
