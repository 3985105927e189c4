"""Shift consistency, LayerShuffle order/pruning tests and the leaderboard's order aggregates."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pydantic
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from robustbench_vit import load_suite
from robustbench_vit.core.cells import canonical_json
from robustbench_vit.core.metrics import Measurement
from robustbench_vit.data.datasets import Digits
from robustbench_vit.execution.evaluate import evaluate_cell
from robustbench_vit.models.adapters import Stage, arranged
from robustbench_vit.models.sources import NormalizedModel
from robustbench_vit.models.vit import backbone_of
from robustbench_vit.results import table as lb
from robustbench_vit.scenarios.base import CellContext
from robustbench_vit.scenarios.clean import CleanScenario
from robustbench_vit.scenarios.layer_order import scenario as lo
from robustbench_vit.scenarios.layer_order.scenario import LayerOrderScenario
from robustbench_vit.scenarios.shift import ShiftScenario, circular_shift, crop_shift


@pytest.fixture(scope="module")
def digits_test() -> tuple[torch.Tensor, torch.Tensor]:
    """The whole digits test split (450 images)."""
    x, y = Digits(split="test").load().tensors
    return x, y


def context(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], seed: int = 0,
            batch_size: int = 100) -> CellContext:
    return CellContext(model=model, loader=DataLoader(TensorDataset(*data), batch_size=batch_size),
                       device=torch.device("cpu"), seed=seed, num_classes=10)


def by_metric(rows: list[Measurement]) -> dict[str, float]:
    return {m.metric: m.value for m in rows}


def clean_accuracy(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> float:
    return by_metric(CleanScenario().run(context(model, data)))["accuracy"]


# --- shift ---------------------------------------------------------------------------------------

class PooledMoments(nn.Module):
    """Nearest class centroid on global means of x, x^2, x^3, x^4: invariant to circular shifts."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        super().__init__()
        features = self.features(x)
        self.register_buffer("mean", features.mean(0))
        self.register_buffer("std", features.std(0))
        centroids = torch.stack([features[y == k].mean(0) for k in range(10)])
        self.register_buffer("centroids", (centroids - self.mean) / self.std)

    @staticmethod
    def features(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([(x ** p).mean((1, 2, 3)) for p in (1, 2, 3, 4)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (self.features(x) - self.mean) / self.std
        return -torch.cdist(z, self.centroids)


def test_shift_functions_move_content_as_documented() -> None:
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    assert torch.equal(circular_shift(x, (2, 1), 3, "zeros"), torch.roll(x, (2, 1), (2, 3)))
    zeros = crop_shift(x, (2, 1), 3, "zeros")
    assert zeros.shape == x.shape
    assert torch.equal(zeros[:, :, 2:, 1:], x[:, :, :-2, :-1])  # content moved down 2, right 1
    assert zeros[:, :, :2].abs().sum() == 0 and zeros[:, :, :, :1].abs().sum() == 0
    reflect = crop_shift(x, (2, 1), 3, "reflect")
    assert torch.equal(reflect[:, :, 2:, 1:], x[:, :, :-2, :-1])
    assert torch.equal(reflect[:, :, 1, 1:], x[:, :, 1, :-1])  # row above row 0 reflects row 1
    for mode in ("zeros", "reflect"):
        assert torch.equal(crop_shift(x, (0, 0), 3, mode), x)
    assert torch.equal(crop_shift(x, (3, 3), 3, "zeros")[:, :, 3:, 3:], x[:, :, :3, :3])


def test_circular_max_shift_zero_is_exactly_consistent(digits_model: nn.Module,
                                                        digits_test: tuple) -> None:
    rows = by_metric(ShiftScenario(max_shift=0, passes=2).run(context(digits_model, digits_test)))
    assert rows["shift_consistency"] == 1.0
    assert rows["shifted_accuracy"] == clean_accuracy(digits_model, digits_test)


def test_shift_invariant_model_is_consistent_and_the_vit_is_not(digits_model: nn.Module,
                                                                 digits_test: tuple) -> None:
    identity = {"mean": (0.0,) * 3, "std": (1.0,) * 3}
    pooled = NormalizedModel(PooledMoments(*digits_test), identity).eval()
    with torch.no_grad():
        assert len(pooled(digits_test[0]).argmax(1).unique()) >= 3  # not a constant classifier
    for max_shift in (4, 16):
        scenario = ShiftScenario(mode="circular", max_shift=max_shift, passes=3)
        assert by_metric(scenario.run(context(pooled, digits_test)))["shift_consistency"] == 1.0
    vit = by_metric(ShiftScenario(max_shift=4, passes=3).run(context(digits_model, digits_test)))
    assert vit["shift_consistency"] < 0.95
    assert vit["shifted_accuracy"] < clean_accuracy(digits_model, digits_test)


def test_crop_mode_runs_and_differs_from_circular(digits_model: nn.Module,
                                                  digits_test: tuple) -> None:
    ctx = lambda: context(digits_model, digits_test)  # noqa: E731
    circular = ShiftScenario(mode="circular", max_shift=4, passes=3).run(ctx())
    crop = ShiftScenario(mode="crop", max_shift=4, passes=3).run(ctx())
    reflect = ShiftScenario(mode="crop", max_shift=4, passes=3, pad="reflect").run(ctx())
    assert [m.metric for m in crop] == ["shift_consistency", "shifted_accuracy"]
    assert all(m.n == 3 * 450 and m.ci_low <= m.value <= m.ci_high for m in crop)
    assert by_metric(crop) != by_metric(circular)
    assert by_metric(reflect) != by_metric(crop)


def test_shift_is_deterministic_for_a_seed(digits_model: nn.Module, digits_test: tuple) -> None:
    scenario = ShiftScenario(mode="crop", max_shift=4, passes=2)
    first = scenario.run(context(digits_model, digits_test, seed=3))
    again = scenario.run(context(digits_model, digits_test, seed=3))
    other = scenario.run(context(digits_model, digits_test, seed=4))
    assert first == again
    assert by_metric(first) != by_metric(other)


@pytest.mark.parametrize("params", [{"max_shift": -1}, {"passes": 0}, {"mode": "wrap"},
                                    {"pad": "edge"}])
def test_shift_rejects_bad_params(params: dict) -> None:
    with pytest.raises(pydantic.ValidationError):
        ShiftScenario.from_params(params)


# --- layer order ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def order_rows(digits_model: nn.Module, digits_test: tuple) -> list[Measurement]:
    scenario = LayerOrderScenario(permutations=10, prune=[0, 1, 2], prune_draws=5)
    return scenario.run(context(digits_model, digits_test))


def values(rows: list[Measurement], metric: str, **match: object) -> list[float]:
    return [m.value for m in rows
            if m.metric == metric and all(m.extra.get(k) == v for k, v in match.items())]


def test_identity_arrangement_gives_identical_logits(digits_model: nn.Module,
                                                     digits_batch: tuple) -> None:
    x = digits_batch[0]
    backbone = backbone_of(digits_model)
    stage = Stage("blocks", backbone, "blocks")
    with torch.no_grad():
        plain = digits_model(x)
        with arranged(stage, list(range(len(backbone.blocks)))):
            assert type(backbone.blocks) is nn.Sequential
            same = digits_model(x)
        with arranged(stage, [1, 0, 2, 3]):
            swapped = digits_model(x)
    assert torch.equal(plain, same)
    assert not torch.allclose(plain, swapped)


def test_identity_permutation_gives_exactly_the_clean_accuracy(
        digits_model: nn.Module, digits_test: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lo, "draw_permutations",
                        lambda count, depth, seed: [tuple(range(depth))] * count)
    rows = LayerOrderScenario(permutations=2).run(context(digits_model, digits_test))
    clean = clean_accuracy(digits_model, digits_test)
    assert values(rows, "accuracy", order="sequential") == [clean]
    assert values(rows, "order_accuracy") == [clean, clean]
    assert {m.extra["order"] for m in rows if m.metric == "order_accuracy"} == {"0-1-2-3"}


def test_row_layout(order_rows: list[Measurement]) -> None:
    metrics = [m.metric for m in order_rows]
    assert metrics == ["accuracy"] + ["order_accuracy"] * 10 + ["pruned_accuracy"] * 15
    perms = [m.extra for m in order_rows if m.metric == "order_accuracy"]
    assert [p["permutation"] for p in perms] == list(range(10))
    assert all(sorted(map(int, p["order"].split("-"))) == [0, 1, 2, 3] for p in perms)
    for m in order_rows:
        if m.metric == "pruned_accuracy":
            kept = [int(i) for i in m.extra["order"].split("-")]
            assert len(kept) == 4 - m.extra["pruned"] and kept == sorted(set(kept))
        assert m.n == 450 and m.ci_low <= m.value <= m.ci_high


def test_random_orders_hurt_a_standard_vit(order_rows: list[Measurement]) -> None:
    sequential = values(order_rows, "accuracy")[0]
    orders = values(order_rows, "order_accuracy")
    assert sum(orders) / len(orders) < sequential - 0.1
    assert max(orders) <= sequential + 0.02


def test_pruning_zero_is_sequential_and_more_pruning_does_not_help(
        order_rows: list[Measurement]) -> None:
    sequential = values(order_rows, "accuracy")[0]
    assert values(order_rows, "pruned_accuracy", pruned=0) == [sequential] * 5
    means = [sum(v) / len(v) for v in (values(order_rows, "pruned_accuracy", pruned=k)
                                       for k in (0, 1, 2))]
    assert means[0] >= means[1] >= means[2]
    assert means[2] < sequential


def test_layer_order_is_deterministic_for_a_seed(digits_model: nn.Module, digits_test: tuple,
                                                 order_rows: list[Measurement]) -> None:
    again = LayerOrderScenario(permutations=10, prune=[0, 1, 2], prune_draws=5).run(
        context(digits_model, digits_test))
    assert again == order_rows
    other = LayerOrderScenario(permutations=10).run(context(digits_model, digits_test, seed=1))
    assert [m.extra for m in other[1:]] != [m.extra for m in order_rows[1:11]]


def test_blocks_are_restored_after_the_scenario_even_when_it_raises(
        digits_model: nn.Module, digits_test: tuple) -> None:
    backbone = backbone_of(digits_model)
    original, modules = backbone.blocks, list(backbone.blocks)
    keys = list(digits_model.state_dict())
    LayerOrderScenario(permutations=2, prune=[1], prune_draws=1).run(
        context(digits_model, digits_test))
    assert backbone.blocks is original and list(backbone.blocks) == modules
    calls = []

    def fail_when_rearranged(module: nn.Module, args: tuple) -> None:
        calls.append(1)
        if backbone.blocks is not original:
            raise RuntimeError("boom")

    handle = modules[2].register_forward_pre_hook(fail_when_rearranged)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            LayerOrderScenario(permutations=3).run(context(digits_model, digits_test))
    finally:
        handle.remove()
    assert len(calls) >= 2  # the sequential pass ran, then a rearranged one raised
    assert backbone.blocks is original and list(backbone.blocks) == modules
    assert list(digits_model.state_dict()) == keys


def test_layer_order_param_checks(digits_model: nn.Module, digits_test: tuple) -> None:
    with pytest.raises(ValueError, match="repeated"):
        LayerOrderScenario.from_params({"prune": [1, 1]})
    with pytest.raises(pydantic.ValidationError):
        LayerOrderScenario.from_params({"prune": [-1]})
    with pytest.raises(ValueError, match="prune 5"):
        LayerOrderScenario(permutations=0, prune=[5]).run(context(digits_model, digits_test))


SUITE = """
suite: order_test
data: {{dataset: digits, split: test, image_size: 32, n_examples: 16, batch_size: 16}}
models:
  - {{name: m, source: "{source}"{kwargs}}}
scenarios:
  - {{kind: layer_order, permutations: 2, prune: [1], prune_draws: 1}}
  - {{kind: shift, mode: crop, max_shift: 2, passes: 1}}
"""


@pytest.mark.parametrize(("source", "reason"), [
    ("timm:test_resnet", "ResNet has no sequence of interchangeable encoder blocks"),
    ("timm:test_convnext", "ConvNeXt has no sequence of interchangeable encoder blocks"),
    ("timm:test_efficientnet", "generic: EfficientNet has no sequence of interchangeable"),
])
def test_models_without_one_block_sequence_are_skipped(tmp_path: Path, source: str,
                                                       reason: str) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(source=source, kwargs=", kwargs: {num_classes: 10}"))
    order, shift = load_suite(path).cells("cpu")
    result = evaluate_cell(order)
    assert result.status == "skipped" and reason in result.error
    assert evaluate_cell(shift).status == "ok"  # shift needs no blocks


# --- aggregates ----------------------------------------------------------------------------------

def long_rows(model: str, metric: str, values_by_extra: list[tuple[dict, float]],
              **params: object) -> list[dict]:
    base = {"permutations": 3, "prune": [1, 2], "prune_draws": 2, **params}
    return [{"suite": "s", "model": model, "defense": "none", "scenario": "layer_order",
             "params": canonical_json({**base, **extra}), "metric": metric, "value": value,
             "n": 100, "ci_low": value - 0.05, "ci_high": value + 0.05, "status": "ok"}
            for extra, value in values_by_extra]


def test_order_aggregates_from_a_hand_made_long_table() -> None:
    order = lambda i, o: {"permutation": i, "order": o}  # noqa: E731
    rows = (long_rows("vit", "accuracy", [({"order": "sequential"}, 0.9)])
            + long_rows("vit", "order_accuracy",
                        [(order(0, "1-0-2"), 0.2), (order(1, "2-1-0"), 0.5),
                         (order(2, "0-1-2"), 0.8)])
            + long_rows("vit", "pruned_accuracy",
                        [({"pruned": 1, "draw": 0, "order": "0-1"}, 0.6),
                         ({"pruned": 1, "draw": 1, "order": "1-2"}, 0.4),
                         ({"pruned": 2, "draw": 0, "order": "0"}, 0.3),
                         ({"pruned": 2, "draw": 1, "order": "2"}, 0.1)])
            + long_rows("deit", "order_accuracy", [(order(0, "1-0"), 0.7), (order(1, "0-1"), 0.7)])
            + long_rows("vit", "order_accuracy", [(order(0, "1-0-2"), 0.1)], permutations=1))
    table = lb.long_table(pd.DataFrame(rows))
    derived = table[table["params"].str.contains('"aggregate"')]
    got = {(r.model, r.metric, canonical_json(json.loads(r.params))): (r.value, r.n)
           for r in derived.itertuples()}
    cell = {"permutations": 3, "prune": [1, 2], "prune_draws": 2}
    key = lambda model, metric, **p: (model, metric, canonical_json({**cell, **p}))  # noqa: E731
    std = math.sqrt(((0.2 - 0.5) ** 2 + 0 + (0.8 - 0.5) ** 2) / 3)
    expected = {
        key("vit", "order_accuracy", aggregate="mean"): (0.5, 3),
        key("vit", "order_accuracy", aggregate="std"): (std, 3),
        key("vit", "order_accuracy", aggregate="min"): (0.2, 3),
        key("vit", "pruned_accuracy", pruned=1, aggregate="mean"): (0.5, 2),
        key("vit", "pruned_accuracy", pruned=2, aggregate="mean"): (0.2, 2),
        key("deit", "order_accuracy", aggregate="mean"): (0.7, 2),
        key("deit", "order_accuracy", aggregate="std"): (0.0, 2),
        key("deit", "order_accuracy", aggregate="min"): (0.7, 2),
        key("vit", "order_accuracy", permutations=1, aggregate="mean"): (0.1, 1),
        key("vit", "order_accuracy", permutations=1, aggregate="std"): (0.0, 1),
        key("vit", "order_accuracy", permutations=1, aggregate="min"): (0.1, 1),
    }
    assert set(got) == set(expected)
    for k, (value, n) in expected.items():
        assert got[k] == (pytest.approx(value), n), k
    assert derived["ci_low"].isna().all() and (derived["scenario"] == "layer_order").all()
    assert len(table) == len(rows) + len(expected)


def test_order_aggregates_add_nothing_without_layer_order_rows() -> None:
    rows = long_rows("vit", "accuracy", [({}, 0.9)])
    for row in rows:
        row["scenario"] = "clean"
    table = lb.long_table(pd.DataFrame(rows))
    assert len(table) == 1 and table["value"].dtype == float
