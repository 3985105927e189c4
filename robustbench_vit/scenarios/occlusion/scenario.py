"""`occlusion`: top-1 accuracy when a random fraction of the image's squares is dropped.

The random PatchDrop probe of Naseer et al. 2021 ("Intriguing Properties of Vision Transformers")
and Paul & Chen 2022 ("Vision Transformers are Robust Learners"). The image is cut into a grid of
squares: `grid: token` uses the model's token patch (the pixel step of its first token grid, asked
of the family adapter), so a dropped square removes exactly one token's pixels; `grid: pixel` uses
squares of `square` pixels; `grid: auto` (default) is `token` for models with patch tokens and
`pixel` for the others (CNNs, a defense that wraps the model in an unknown module). Squares at the
bottom and right edges are cut short when their side does not divide the image.

For batch b of the cell (its index in the whole cell) and draw d, each image gets a uniformly
random order of its n squares from a generator seeded by (cell seed, b, d): the same for every model
with the same grid and batch size at the same seed, so a ViT with 8-px tokens and a CNN with
`square: 8` see identical masks. Ratio r drops the first round(r * n) squares of that order
(Python's round) [choice: the masks of one image are nested across ratios, so the curve compares
like with like; each is still a uniformly random set of that size]. Dropped pixels are set to
`fill` in every channel, in pixel space before the model's normalization (0 = black: Naseer et
al. zero them).

Rows: `occlusion_accuracy` per ratio, params {"ratio", "mask_grid": "token" | "pixel",
"mask_square": "8x8"}, over images x draws (with draws > 1 the Wilson interval treats the draws of
one image as independent). With `draws: 1` each row carries its per-image outcomes, so paired gates
(`better_than`) compare models image by image. `ratio` is a detail param: the headline pivot shows
the mean over the ratios (`plots.occlusion_means`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from ...core.errors import UnsupportedModel
from ...core.metrics import Measurement, proportion, register_metric
from ...core.params import ParamError
from ...core.registry import SCENARIOS
from ...models.vit import patch_size
from ..base import (
    CellContext,
    PlanContext,
    Scenario,
    chunked_predictions,
    joined_outcomes,
    skip_reason,
)
from ..shift import scenario_seed

Size = tuple[int, int]

register_metric("occlusion_accuracy", higher_is_better=True, headline=True,
                description="Top-1 accuracy with a random fraction (ratio) of the image's token "
                            "patches (ViTs) or pixel squares (CNNs) set to `fill`")

DEFAULT_RATIOS = tuple(i / 10 for i in range(10))


def square_grid(size: Size, square: Size) -> Size:
    """(rows, cols) of the squares that cover an image of `size` (edge squares cut short)."""
    return -(-size[0] // square[0]), -(-size[1] // square[1])


def drop_ranks(seed: int, batch_index: int, draw: int, batch: int, n: int) -> torch.Tensor:
    """(batch, n) int64: each image's square ranks in a uniformly random order, fixed by (seed,
    batch_index, draw); dropping k squares drops those of rank < k."""
    gen = torch.Generator().manual_seed(scenario_seed(seed, "occlusion", batch_index, draw))
    return torch.rand(batch, n, generator=gen).argsort(1).argsort(1)


def dropped_squares(ranks: torch.Tensor, ratio: float) -> torch.Tensor:
    """(batch, n) bool: the round(ratio * n) lowest-ranked squares of each image."""
    return ranks < round(ratio * ranks.shape[1])


def pixel_mask(dropped: torch.Tensor, square: Size, size: Size) -> torch.Tensor:
    """(m, 1, H, W) bool: the pixels of the dropped squares of (m, rows * cols) square masks."""
    rows, cols = square_grid(size, square)
    grid = dropped.reshape(-1, 1, rows, cols)
    full = grid.repeat_interleave(square[0], 2).repeat_interleave(square[1], 3)
    return full[:, :, :size[0], :size[1]]


@SCENARIOS.register("occlusion")
@dataclass(frozen=True, kw_only=True)
class OcclusionScenario(Scenario):
    """Accuracy with a random fraction of token patches (ViTs) or pixel squares dropped."""

    kind: ClassVar[str] = "occlusion"
    detail_params: ClassVar[frozenset[str]] = frozenset({"ratio"})
    chunkable: ClassVar[bool] = True
    ratios: list[Annotated[float, Field(ge=0, lt=1)]] = field(
        default_factory=lambda: list(DEFAULT_RATIOS))
    grid: Literal["auto", "token", "pixel"] = "auto"
    square: Annotated[int, Field(ge=1)] = 8
    fill: Annotated[float, Field(ge=0, le=1)] = 0.0
    draws: Annotated[int, Field(ge=1)] = 1

    def check(self) -> None:
        """At least one ratio, none repeated (they would duplicate rows)."""
        if not self.ratios:
            raise ParamError("ratios", "needs at least one ratio")
        if len(set(self.ratios)) != len(self.ratios):
            raise ParamError("ratios", f"repeated values in {self.ratios}")

    def mask_grid(self, model: nn.Module) -> tuple[str, Size]:
        """("token" | "pixel", square (h, w) in pixels) for `model`; UnsupportedModel for `grid:
        token` on a model without patch tokens."""
        if self.grid != "pixel":
            try:
                return "token", patch_size(model)
            except UnsupportedModel:
                if self.grid == "token":
                    raise
        return "pixel", (self.square, self.square)

    def unsupported(self, ctx: PlanContext) -> str | None:
        return skip_reason(lambda: self.mask_grid(ctx.model))

    def run(self, ctx: CellContext) -> list[Measurement]:
        return self.merge([self.partial(ctx)])

    @torch.no_grad()
    def partial(self, ctx: CellContext) -> dict[str, Any]:
        """Correctness of every (ratio, draw, image) and the grid used."""
        mode, square = self.mask_grid(ctx.model)
        hits = [torch.zeros(len(self.ratios), self.draws, 0, dtype=torch.bool)]
        for b, (x, y) in enumerate(ctx.batches()):
            hits.append(self.batch_hits(ctx, x, y, ctx.first_batch + b, square))
        correct = torch.cat(hits, dim=2)
        return {"mode": mode, "square": square, "correct": correct,
                "examples": [ctx.outcomes(correct[r, 0]) for r in range(len(self.ratios))]}

    def batch_hits(self, ctx: CellContext, x: torch.Tensor, y: torch.Tensor, batch_index: int,
                   square: Size) -> torch.Tensor:
        """(ratios, draws, batch) bool: top-1 correct on each masked copy of the batch."""
        size, batch = (x.shape[2], x.shape[3]), len(x)
        rows, cols = square_grid(size, square)
        ranks = [drop_ranks(ctx.seed, batch_index, d, batch, rows * cols)
                 for d in range(self.draws)]
        dropped = torch.stack([dropped_squares(r, ratio) for ratio in self.ratios for r in ranks])
        flat = dropped.reshape(-1, rows * cols).to(x.device)  # copy t: variant t // B, image t % B

        def build(start: int, stop: int) -> torch.Tensor:
            images = x[torch.arange(start, stop, device=x.device) % batch]
            return images.masked_fill(pixel_mask(flat[start:stop], square, size), self.fill)

        preds = chunked_predictions(ctx, len(flat), size[0] * size[1], build)
        return (preds.view(len(self.ratios), self.draws, batch) == y.cpu()).bool()

    def merge(self, parts: list[dict[str, Any]]) -> list[Measurement]:
        correct = torch.cat([p["correct"] for p in parts], dim=2)
        square = parts[0]["square"]
        extra = {"mask_grid": parts[0]["mode"], "mask_square": f"{square[0]}x{square[1]}"}
        rows = []
        for r, ratio in enumerate(self.ratios):
            hits = correct[r]
            row = proportion("occlusion_accuracy", int(hits.sum()), hits.numel(), ratio=ratio,
                             **extra)
            if self.draws == 1:
                row = replace(row, examples=joined_outcomes([p["examples"][r] for p in parts]))
            rows.append(row)
        return rows
