"""Adversarial patch attack on ViTs (Gu, Tresp & Qin, ECCV 2022).

Token-grid-aligned square patches whose pixels are *replaced* (x' = x·(1−M) + δ·M, δ ∈ [0,1], no eps
bound), optimized with signed steps on the cross-entropy of the clean prediction, one position at a
time, stopping per (image, position) as soon as the prediction flips. The positions of a batch run
together in large memory-bounded chunks. `content: corruption:<name>` pastes the patch of the
severity-5 corrupted image instead (the paper's natural-patch counterpart; no optimization).

`grid: token` (default) aligns positions to the model's token grid: its pixel step between tokens
from the family adapter (the patch size of a ViT or Swin, the stride of PiT's overlapping patch
convolution, the stem's total stride for LeViT); models without patch tokens (CNNs) are unsupported.
`grid: pixel` places the squares on a pixel grid of step `patch_size` from (0, 0) for any model,
CNNs included (Gu et al. put the same positions on ResNets); for a ViT whose token size divides
`patch_size` these are the token-grid positions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from robustbench_vit.api import CORRUPTIONS, Attack, ParamError, UnsupportedModel, register_attack
from robustbench_vit.api import patch_size as token_patch_size

CHUNK_PIXELS = 2**20
"""(image, position) pairs per chunk x image pixels, at most (a memory bound, not a result knob)."""


@register_attack("patch")
@dataclass(frozen=True, kw_only=True)
class PatchAttack(Attack):
    """Adversarial patch: a token- or pixel-grid square replaced, signed steps, early stop."""

    needs_gradients: ClassVar[bool] = True
    unkeyed_defaults: ClassVar[dict[str, Any]] = {"grid": "token"}
    patch_size: Annotated[int, Field(ge=1)] = 8
    steps: Annotated[int, Field(ge=0)] = 100
    alpha: Annotated[float, Field(gt=0)] = 2 / 255
    positions: Literal["all", "random"] = "all"
    n_positions: Annotated[int, Field(ge=1)] = 4
    content: str = "adversarial"
    severity: Annotated[int, Field(ge=1, le=5)] = 5
    grid: Literal["token", "pixel"] = "token"

    def check(self) -> None:
        if self.content == "adversarial":
            return
        kind, _, name = self.content.partition(":")
        if kind != "corruption":
            raise ParamError("content", "expected 'adversarial' or 'corruption:<name>'")
        if name not in CORRUPTIONS:
            close = CORRUPTIONS.suggest(name)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ParamError("content", f"unknown corruption {name!r}{hint} "
                                        "(see `rbv ls corruptions`)")

    def threat_model(self) -> None:
        return None

    def unsupported(self, model: nn.Module) -> str | None:
        if self.grid == "pixel":
            return None
        try:
            self.token_step(model)
        except UnsupportedModel as exc:
            return str(exc)
        return None

    @staticmethod
    def token_step(model: nn.Module) -> tuple[int, int]:
        """The model's pixel step between tokens (UnsupportedModel, pointing at `grid: pixel`,
        for a model without patch tokens)."""
        try:
            return token_patch_size(model)
        except UnsupportedModel as exc:
            raise UnsupportedModel(f"{exc}; `grid: pixel` places the patches on a pixel grid "
                                   "for any model") from None

    def positions_grid(self, model: nn.Module, x: torch.Tensor) -> list[tuple[int, int]]:
        """Top-left corners of the patch positions: every `patch_size` pixels from (0, 0), checked
        against the model's token grid with `grid: token` (UnsupportedModel for models without
        patch tokens)."""
        if self.grid == "token":
            ph, pw = self.token_step(model)
            if self.patch_size % ph or self.patch_size % pw:
                raise ValueError(f"patch_size {self.patch_size} must be a multiple of the model's "
                                 f"token patch size {ph}x{pw} (the pixel step between "
                                 "neighbouring tokens), or use `grid: pixel`")
        h, w = x.shape[-2:]
        return [(r, c) for r in range(0, h - self.patch_size + 1, self.patch_size)
                for c in range(0, w - self.patch_size + 1, self.patch_size)]

    def chosen_positions(self, model: nn.Module, x: torch.Tensor,
                         seed: int) -> list[tuple[int, int]]:
        """All grid positions, or `n_positions` of them drawn with `seed`."""
        grid = self.positions_grid(model, x)
        if self.positions == "all" or self.n_positions >= len(grid):
            return grid
        gen = torch.Generator().manual_seed(seed)
        return [grid[i] for i in torch.randperm(len(grid), generator=gen)[: self.n_positions]]

    def masks(self, positions: list[tuple[int, int]], x: torch.Tensor) -> torch.Tensor:
        """(P,1,H,W) binary masks, one per position."""
        masks = torch.zeros(len(positions), 1, *x.shape[-2:], device=x.device)
        for i, (r, c) in enumerate(positions):
            masks[i, :, r:r + self.patch_size, c:c + self.patch_size] = 1
        return masks

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                seed: int) -> torch.Tensor:
        return self.perturb_with_stats(model, x, y, seed=seed)[0]

    def perturb_with_stats(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                           seed: int) -> tuple[torch.Tensor, dict[str, tuple[int, int]]]:
        """Worst position per image, and the fooling rate over (image, position) pairs.

        The (image, position) pairs run in image-major chunks of at most CHUNK_PIXELS pixels
        (a whole 32-px batch at once; ~20 pairs at 224 px, where all 196 positions of a batch of
        100 would need ~12 GB per copy of the images); each pair is optimized on its own, and the
        random starts are drawn chunk after chunk from one generator, so the chunking does not
        change which random numbers a pair gets.
        """
        positions = self.chosen_positions(model, x, seed)
        masks = self.masks(positions, x)
        b, p = len(x), len(positions)
        with torch.no_grad():
            label = model(x).argmax(1)
        gen = torch.Generator(device=x.device).manual_seed(seed)
        corrupted = None if self.content == "adversarial" else self._corrupted(x, seed)
        x_adv = x.detach().clone()
        worst = torch.full((b,), float("inf"), device=x.device)
        fooled = 0
        per = max(1, CHUNK_PIXELS // (x.shape[-2] * x.shape[-1]))
        for start in range(0, b * p, per):
            rows = torch.arange(start, min(start + per, b * p), device=x.device)
            image, position = rows // p, rows % p  # row i*p + j is image i at position j
            xs, ms, labels = x[image], masks[position], label[image]
            if corrupted is None:
                adv, margin = self._optimize(model, xs, ms, labels, gen)
            else:
                adv = xs * (1 - ms) + corrupted[image] * ms
                margin = _margins(model, adv, labels)
            fooled += int((margin < 0).sum())
            for i in image.unique_consecutive().tolist():  # per image: its first lowest margin
                here = torch.nonzero(image == i).flatten()
                k = here[margin[here].argmin()]
                if margin[k] < worst[i]:
                    worst[i] = margin[k]
                    x_adv[i] = adv[k]
        return x_adv, {"attack_success_rate": (fooled, b * p)}

    def _optimize(self, model: nn.Module, xs: torch.Tensor, ms: torch.Tensor,
                  labels: torch.Tensor,
                  gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        delta = torch.rand(xs.shape, generator=gen, device=xs.device)
        active = torch.ones(len(xs), dtype=torch.bool, device=xs.device)
        for _ in range(self.steps):
            idx = torch.nonzero(active).flatten()
            if not len(idx):
                break
            d = delta[idx].requires_grad_(True)
            logits = model(xs[idx] * (1 - ms[idx]) + d * ms[idx])
            still = logits.argmax(1) == labels[idx]
            grad, = torch.autograd.grad(F.cross_entropy(logits, labels[idx], reduction="sum"), d)
            step = (d + self.alpha * grad.sign()).clamp(0, 1).detach()
            delta[idx] = torch.where(still.view(-1, 1, 1, 1), step, d.detach())
            active[idx] = still
        adv = xs * (1 - ms) + delta * ms
        return adv.detach(), _margins(model, adv, labels)

    def _corrupted(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        """Each image corrupted once; every position pastes its own square of that one image."""
        from robustbench_vit.api import corrupt_batch

        return corrupt_batch(x, self.content.split(":", 1)[1], self.severity, seed)


@torch.no_grad()
def _margins(model: nn.Module, x: torch.Tensor, labels: torch.Tensor,
             chunk: int = 512) -> torch.Tensor:
    """logit[label] − max other logit per row (negative = fooled)."""
    out = []
    for i in range(0, len(x), chunk):
        logits = model(x[i:i + chunk])
        true = logits.gather(1, labels[i:i + chunk, None]).squeeze(1)
        other = logits.scatter(1, labels[i:i + chunk, None], float("-inf")).amax(1)
        out.append(true - other)
    return torch.cat(out)
