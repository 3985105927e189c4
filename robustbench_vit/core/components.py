"""The component contracts: what an attack and a defense implement (re-exported by `api`).

Components are kw_only dataclasses; their fields are the YAML keys a suite may set.
Images are float tensors in [0,1] pixel space; models take such images (normalization is inside).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    import torch
    from torch import nn

Norm = Literal["Linf", "L2"]
UNBOUNDED_MIN_STEPS = 20
"""Fewest steps of an attack's unbounded variant (10-step APGD-DLR at eps 1 left 1 image in 10
correct on a LayerShuffle model: its step-size schedule has too few checkpoints)."""


@dataclass(frozen=True, kw_only=True)
class Attack:
    """Base of attacks: `perturb` returns adversarial images in [0,1] for images `x`, labels `y`.

    `threat_model` is (norm, eps) for bounded attacks, None for unbounded ones (patches); the
    framework checks every output against it. `needs_gradients` marks white-box attacks, so a
    non-differentiable defense can be flagged. `min_classes`: fewer classes make the cell skipped.
    `unbounded` and `stronger` give the variants the attack-failure indicators run.
    """

    needs_gradients: ClassVar[bool] = True
    min_classes: ClassVar[int] = 2
    returns_clean_on_failure: ClassVar[bool] = False
    """True for attacks that return the unchanged image where they fail (APGD, Square,
    AutoAttack): their output says nothing of their progress, so the `silent` indicator skips
    them."""
    unkeyed_defaults: ClassVar[dict[str, Any]] = {}
    """Fields added after results were stored, with their defaults: a field at that default stays
    out of the stored params and the cell key (`key_params`), so existing suites keep their
    keys."""

    def key_params(self) -> dict[str, Any]:
        """The fields as stored params and in cell keys: every field but those at their
        `unkeyed_defaults`."""
        from .params import to_plain, without_unkeyed

        return without_unkeyed(to_plain(self), self.unkeyed_defaults)

    def threat_model(self) -> tuple[str, float] | None:
        """(norm, eps) of the budget, or None when the attack is unbounded."""
        norm, eps = getattr(self, "norm", "Linf"), getattr(self, "eps", None)
        return None if eps is None else (norm, float(eps))

    def budget_problem(self, dims: int | None = None) -> str | None:
        """Why the budget cannot describe a perturbation of images in [0,1], or None: an eps
        that is negative or not finite, an L∞ eps above 1 (the whole pixel range), and with
        `dims` (values per image) an L2 eps above sqrt(dims), the diameter of [0,1]^dims.
        Suites check it for every attack when they validate; the cell checks `dims`."""
        threat = self.threat_model()
        if threat is None:
            return None
        norm, eps = threat
        if not math.isfinite(eps) or eps < 0:
            return f"expected a finite eps >= 0, got {eps}"
        if norm == "Linf" and eps > 1:
            return (f"an L∞ eps of {eps:g} is above 1, the whole pixel range: images live in "
                    "[0,1], so L∞ budgets are in [0, 1] (e.g. 8/255)")
        if norm == "L2" and dims is not None and eps > math.sqrt(dims) * (1 + 1e-6):
            return (f"an L2 eps of {eps:g} is above {math.sqrt(dims):.4g}, the diameter of "
                    f"images of {dims} values in [0,1]: it bounds nothing")
        return None

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                seed: int) -> torch.Tensor:
        """Adversarial versions of `x` (same shape, in [0,1]); deterministic for `seed`."""
        raise NotImplementedError

    def perturb_with_stats(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                           seed: int) -> tuple[torch.Tensor, dict[str, tuple[int, int]]]:
        """`perturb`, plus proportions the attack measures itself: {metric: (successes, n)}.

        They replace the scenario's own metric of the same name (e.g. a patch attack's fooling rate
        over (image, position) pairs replaces the per-image attack_success_rate).
        """
        return self.perturb(model, x, y, seed=seed), {}

    def unsupported(self, model: nn.Module) -> str | None:
        """Why this attack cannot run on `model` (a structure-only model on the meta device may
        be given), or None. Used by the plan before anything runs; the cell still checks."""
        return None

    def unbounded(self, dims: int) -> Attack | None:
        """This attack at a budget that must win on inputs of `dims` values (L∞ eps 1, L2 the
        diameter of [0,1]^dims), from the clean image, with at least UNBOUNDED_MIN_STEPS steps
        (of a tenth of that budget where it has `alpha`: a few steps of 2.5·eps/steps jump between
        corners of the cube and can miss); None for an attack without a budget. The `unbounded`
        attack-failure indicator runs it."""
        threat = self.threat_model()
        if threat is None:
            return None
        eps = 1.0 if threat[0] == "Linf" else math.sqrt(dims)
        changes: dict[str, object] = {"eps": eps}
        fields = self._fields()
        if "random_start" in fields:
            changes["random_start"] = False
        if "alpha" in fields:
            changes["alpha"] = eps / 10
        if "steps" in fields:
            changes["steps"] = max(UNBOUNDED_MIN_STEPS, int(fields["steps"]))
        return dataclasses.replace(self, **changes)

    def stronger(self) -> Attack | None:
        """This attack with twice the iterations (`steps`, else `n_queries`), or None when it has
        neither. The `not_converged` attack-failure indicator runs it."""
        fields = self._fields()
        for name in ("steps", "n_queries"):
            if fields.get(name):
                return dataclasses.replace(self, **{name: 2 * int(fields[name])})
        return None

    def _fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True, kw_only=True)
class Defense:
    """Base of defenses: `apply` returns the defended model (still [0,1] images in, logits out).

    `stage` is "inference" (wraps or edits a trained model) or "training" (the zoo fine-tunes the
    base model with the defense applied, cached by content hash; `needs_training` may depend on a
    field). `apply` receives a private copy and may edit it in place. Training hooks: `epochs`,
    `lr` and `distill` (True: the undefended base model is the teacher of a distillation loss)
    fields when present, and `training_loss` for extra loss terms. How attacks must see it (its
    adaptive view): `attack_view` (the differentiable stand-in gradient attacks run on) and
    `eot_samples` (randomized defenses); `differentiable` False without a view flags
    gradient-attack rows.
    """

    stage: ClassVar[Literal["inference", "training"]] = "inference"
    differentiable: ClassVar[bool] = True

    def needs_training(self) -> bool:
        """Whether the zoo must fine-tune the base model with this defense."""
        return self.stage == "training"

    def is_identity(self) -> bool:
        """Whether the defended model is the base model itself (the `none` defense)."""
        return type(self).apply is Defense.apply and not self.needs_training()

    def apply(self, model: nn.Module) -> nn.Module:
        """The defended model."""
        return model

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      logits: torch.Tensor) -> torch.Tensor | None:
        """An extra loss term added while fine-tuning (None: plain cross-entropy)."""
        return None

    def unsupported(self, model: nn.Module) -> str | None:
        """Why this defense cannot be applied to `model`, or None (the plan asks before anything
        runs; `model` may be a structure-only model on the meta device). The default applies the
        defense to a copy and reports an UnsupportedModel it raises: the same code as the cell."""
        outcome = self.try_apply(model)
        return outcome if isinstance(outcome, str) else None

    def try_apply(self, model: nn.Module) -> nn.Module | str:
        """The defense applied to a copy of `model` (made on its device: the meta device for the
        plan), or the message of the UnsupportedModel `apply` raises."""
        import copy

        import torch

        from .errors import UnsupportedModel

        if type(self).apply is Defense.apply:
            return model
        device = next(iter(model.parameters()), torch.empty(0)).device
        try:
            with torch.device(device):
                return self.apply(copy.deepcopy(model))
        except UnsupportedModel as exc:
            return str(exc)

    def attack_view(self, defended: nn.Module) -> nn.Module | None:
        """The adaptive view gradient attacks run on (the decision made differentiable, e.g.
        smoothing's soft vote over every ablation); None to attack `defended` itself. The
        defended model still judges every adversarial example."""
        return None

    def eot_samples(self) -> int:
        """Random draws a gradient attack averages per step (expectation over transformation)
        when the defended model is randomized; 1 for a deterministic one. A suite's `eot:` on an
        attack may raise it, never lower it."""
        return 1

    def training_settings(self) -> dict[str, object]:
        """The fields that set the fine-tuned weights of a training defense (its checkpoint's
        cache key); fields that only change how the trained model is evaluated stay out."""
        from .params import to_plain

        return to_plain(self)
