"""`layer_order`: accuracy with the encoder blocks run in random orders or with blocks removed.

The LayerShuffle tests (Freiberger et al. 2024). `permutations` block orders are drawn uniformly at
random from the cell seed; the identity is not excluded [choice: the mean then estimates
accuracy under an arbitrary order; with depth 4 it is drawn with probability 1/24 each]. Each gives
one `order_accuracy` row ({"permutation": i, "order": "3-0-2-1"}); the unmodified model gives an
`accuracy` row ({"order": "sequential"}). For every k in `prune`, `prune_draws` random sets of k
blocks are removed (drawn independently, so small models may repeat a set), the rest keep their
order: `pruned_accuracy` rows ({"pruned": k, "draw": j, "order": kept blocks}). Mean, std and
min over permutations and the mean per k are derived by the leaderboard
(robustbench_vit.scenarios.layer_order.stats).

The blocks rearranged are the family adapter's `order_stage` (a ViT's `blocks`, the self-attention
blocks of CaiT and XCiT); families where reordering or removing blocks is not defined (hierarchical
models, ConViT, CNNs) are skipped with the adapter's reason, and so is a stage whose blocks change
the feature shape. Blocks are rearranged by temporarily replacing the stage's container with a new
one holding the same block modules (`adapters.arranged`); the original container is put back in a
`finally`, so the shared model is restored exactly even when a forward pass raises. Identical
arrangements (the identity, k = 0, repeated draws) are evaluated once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, ClassVar

import torch
from pydantic import Field

from ...core.metrics import Measurement, proportion, register_metric
from ...core.params import ParamError
from ...core.registry import SCENARIOS
from ...models.adapters import Stage, adapter_for, arranged, check_same_shapes
from ..base import CellContext, PlanContext, Scenario, skip_reason
from ..shift import scenario_seed

log = logging.getLogger(__name__)

Order = tuple[int, ...]


register_metric("order_accuracy", higher_is_better=True, headline=True,
                description="Top-1 accuracy with the encoder blocks in a random order")
register_metric("pruned_accuracy", higher_is_better=True, headline=True,
                description="Top-1 accuracy with k encoder blocks removed")


def order_label(order: Sequence[int]) -> str:
    """"3-0-2-1": the block indices in execution order."""
    return "-".join(str(i) for i in order)


def draw_permutations(count: int, depth: int, seed: int) -> list[Order]:
    """`count` uniformly random orders of `depth` blocks, fixed by `seed` (identity allowed)."""
    gen = torch.Generator().manual_seed(scenario_seed(seed, "layer_order", "permutations"))
    return [tuple(torch.randperm(depth, generator=gen).tolist()) for _ in range(count)]


def draw_pruned(k: int, draws: int, depth: int, seed: int) -> list[Order]:
    """`draws` orders keeping depth - k random blocks in their original order, fixed by `seed`."""
    gen = torch.Generator().manual_seed(scenario_seed(seed, "layer_order", "prune", k))
    return [tuple(sorted(torch.randperm(depth, generator=gen)[k:].tolist())) for _ in range(draws)]


@SCENARIOS.register("layer_order")
@dataclass(frozen=True, kw_only=True)
class LayerOrderScenario(Scenario):
    """Accuracy with encoder blocks in random orders (LayerShuffle) and with k blocks pruned."""

    kind: ClassVar[str] = "layer_order"
    detail_params: ClassVar[frozenset[str]] = frozenset({"permutation", "draw"})
    permutations: Annotated[int, Field(ge=0)] = 10
    prune: list[Annotated[int, Field(ge=0)]] = field(default_factory=list)
    prune_draws: Annotated[int, Field(ge=1)] = 5

    def check(self) -> None:
        """Reject repeated pruning depths (they would duplicate rows)."""
        if len(set(self.prune)) != len(self.prune):
            raise ParamError("prune", f"repeated values in {self.prune}")

    def arrangements(self, depth: int, seed: int) -> list[tuple[str, dict[str, object], Order]]:
        """(metric, extra params, block order) of every row this cell reports."""
        if any(k > depth for k in self.prune):
            raise ValueError(f"prune {max(self.prune)} > the model's {depth} blocks")
        rows: list[tuple[str, dict[str, object], Order]] = [
            ("accuracy", {"order": "sequential"}, tuple(range(depth)))]
        for i, order in enumerate(draw_permutations(self.permutations, depth, seed)):
            rows.append(("order_accuracy", {"permutation": i, "order": order_label(order)}, order))
        for k in self.prune:
            for j, kept in enumerate(draw_pruned(k, self.prune_draws, depth, seed)):
                rows.append(("pruned_accuracy", {"pruned": k, "draw": j,
                                                 "order": order_label(kept)}, kept))
        return rows

    @torch.no_grad()
    def unsupported(self, ctx: PlanContext) -> str | None:
        adapter, net = adapter_for(ctx.model)
        return skip_reason(lambda: adapter.order_stage(net))

    def run(self, ctx: CellContext) -> list[Measurement]:
        adapter, net = adapter_for(ctx.model)
        stage = adapter.order_stage(net)
        depth = len(stage.blocks)
        rows = self.arrangements(depth, ctx.seed)
        sequential = tuple(range(depth))
        orders = list(dict.fromkeys(order for _, _, order in rows))
        correct = dict.fromkeys(orders, 0)
        total = 0
        for b, (x, y) in enumerate(ctx.batches()):
            if b == 0:
                check_same_shapes(ctx.model, stage, x)
            for order in orders:
                correct[order] += self.count_correct(ctx, stage, order, sequential, x, y)
            total += len(y)
        log.debug("layer_order: %d arrangements of %d blocks on %d images",
                  len(orders), depth, total)
        return [proportion(metric, correct[order], total, **extra) for metric, extra, order in rows]

    @staticmethod
    def count_correct(ctx: CellContext, stage: Stage, order: Order, sequential: Order,
                      x: torch.Tensor, y: torch.Tensor) -> int:
        """Correct top-1 predictions on (x, y) with the blocks of `stage` in `order`."""
        with ctx.autocast():
            if order == sequential:
                return int((ctx.model(x).argmax(1) == y).sum())
            with arranged(stage, order):
                return int((ctx.model(x).argmax(1) == y).sum())
