"""The `occlusion` scenario (random patch drop): masks, the accuracy curve, chunks, params."""

from __future__ import annotations

import pydantic
import pytest
import timm
import torch
from probe_context import context, first_test_digits
from torch import nn

from robustbench_vit.core.errors import UnsupportedModel
from robustbench_vit.core.metrics import Measurement
from robustbench_vit.core.outcomes import ExampleBits
from robustbench_vit.scenarios.base import PlanContext
from robustbench_vit.scenarios.clean import CleanScenario
from robustbench_vit.scenarios.occlusion.scenario import (
    OcclusionScenario,
    drop_ranks,
    dropped_squares,
    pixel_mask,
    square_grid,
)


@pytest.fixture(scope="module")
def digits_100() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 100 test-split digits."""
    return first_test_digits(100)


def by_ratio(rows: list[Measurement]) -> dict[float, float]:
    return {m.extra["ratio"]: m.value for m in rows}


class Recorder(nn.Module):
    """Records every input batch, then runs the wrapped model (found by the adapters as `model`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.clone())
        return self.model(x)


def tiny_vit(patch: int) -> nn.Module:
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                             patch_size=patch, embed_dim=32, depth=1, num_heads=2,
                             num_classes=10).eval()


def tiny_resnet() -> nn.Module:
    return timm.create_model("test_resnet", pretrained=False, num_classes=10).eval()


def noise_batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Images with no pixel at 0 (the fill), so dropped pixels are exactly the zero ones."""
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, 32, 32, generator=gen) * 0.8 + 0.1, torch.zeros(n, dtype=torch.long)


def seen_masks(model: nn.Module, scenario: OcclusionScenario,
               data: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, list[Measurement]]:
    """(copies, H, W) bool: the dropped pixels of every image the model saw, and the rows."""
    recorder = Recorder(model)
    with torch.no_grad():
        rows = scenario.run(context(recorder, data, batch_size=len(data[1])))
    images = torch.cat(recorder.seen)
    return (images == 0).all(1), rows


def check_squares(masks: torch.Tensor, square: int, ratios: list[float]) -> None:
    """Every mask is a union of whole squares of `square` px (edge squares cut short), and the
    k-th group of copies drops round(ratio_k * n) of them."""
    rows, cols = square_grid((32, 32), (square, square))
    n = rows * cols
    per_ratio = len(masks) // len(ratios)
    for index, mask in enumerate(masks):
        cells = torch.zeros(rows, cols, dtype=torch.long)
        for r in range(rows):
            for c in range(cols):
                block = mask[r * square:(r + 1) * square, c * square:(c + 1) * square]
                assert bool(block.all()) or not bool(block.any()), "a square is partly dropped"
                cells[r, c] = int(block.all())
        assert int(cells.sum()) == round(ratios[index // per_ratio] * n)


def test_ratio_zero_equals_the_clean_accuracy_exactly(digits_model: nn.Module,
                                                      digits_100: tuple) -> None:
    rows = OcclusionScenario(ratios=[0.0, 0.5]).run(context(digits_model, digits_100))
    (clean, *_) = CleanScenario().run(context(digits_model, digits_100))
    zero = rows[0]
    assert zero.extra["ratio"] == 0.0 and zero.n == 100
    assert zero.value == clean.value
    assert zero.examples is not None and clean.examples is not None
    assert (ExampleBits.decode(zero.examples).bits == ExampleBits.decode(clean.examples).bits).all()
    assert rows[1].value < zero.value


def test_accuracy_falls_with_the_drop_ratio(digits_model: nn.Module, digits_100: tuple) -> None:
    ratios = [0.0, 0.3, 0.6, 0.9]
    rows = OcclusionScenario(ratios=ratios).run(context(digits_model, digits_100))
    acc = by_ratio(rows)
    assert list(acc) == ratios
    assert acc[0.9] < acc[0.0] - 0.4
    assert acc[0.0] > acc[0.3] > acc[0.6] > acc[0.9]
    assert all(m.extra["mask_grid"] == "token" and m.extra["mask_square"] == "8x8" for m in rows)
    assert all(m.ci_low <= m.value <= m.ci_high for m in rows)


def test_masks_are_token_patches_for_a_vit() -> None:
    ratios = [0.3, 0.7]  # 19 and 45 of 64 tokens: 8-px squares could not drop those counts
    masks, rows = seen_masks(tiny_vit(patch=4), OcclusionScenario(ratios=ratios), noise_batch())
    assert len(masks) == 6 * len(ratios)
    check_squares(masks, 4, ratios)  # 4-px tokens, not the 8-px default square
    assert {(m.extra["mask_grid"], m.extra["mask_square"]) for m in rows} == {("token", "4x4")}


def test_masks_are_pixel_squares_for_a_cnn() -> None:
    ratios = [0.3, 0.7]
    scenario = OcclusionScenario(ratios=ratios, square=6)  # 6 does not divide 32: short edges
    masks, rows = seen_masks(tiny_resnet(), scenario, noise_batch())
    check_squares(masks, 6, ratios)
    assert {(m.extra["mask_grid"], m.extra["mask_square"]) for m in rows} == {("pixel", "6x6")}
    forced = OcclusionScenario(ratios=ratios, grid="pixel", square=6)
    assert torch.equal(seen_masks(tiny_vit(patch=4), forced, noise_batch())[0], masks)


def test_grid_token_skips_a_model_without_patch_tokens() -> None:
    scenario = OcclusionScenario(grid="token")
    with pytest.raises(UnsupportedModel, match="no patch tokens"):
        scenario.run(context(tiny_resnet(), noise_batch()))
    assert "no patch tokens" in (scenario.unsupported(PlanContext(model=tiny_resnet())) or "")
    assert OcclusionScenario().unsupported(PlanContext(model=tiny_resnet())) is None


def test_a_vit_and_a_cnn_of_equal_squares_see_identical_masks() -> None:
    scenario = OcclusionScenario(ratios=[0.1, 0.5, 0.9], fill=0.0)
    vit, _ = seen_masks(tiny_vit(patch=8), scenario, noise_batch())
    cnn, _ = seen_masks(tiny_resnet(), scenario, noise_batch())
    assert torch.equal(vit, cnn)
    check_squares(vit, 8, [0.1, 0.5, 0.9])


def test_the_same_seed_gives_the_same_masks() -> None:
    first = drop_ranks(seed=3, batch_index=1, draw=0, batch=5, n=16)
    assert torch.equal(first, drop_ranks(seed=3, batch_index=1, draw=0, batch=5, n=16))
    assert sorted(first[0].tolist()) == list(range(16))
    for other in (drop_ranks(4, 1, 0, 5, 16), drop_ranks(3, 2, 0, 5, 16),
                  drop_ranks(3, 1, 1, 5, 16)):
        assert not torch.equal(first, other)
    model = tiny_vit(patch=8)
    scenario = OcclusionScenario(ratios=[0.5])
    again = seen_masks(model, scenario, noise_batch())[0]
    assert torch.equal(seen_masks(model, scenario, noise_batch())[0], again)


def test_dropped_squares_count_and_nesting() -> None:
    ranks = drop_ranks(seed=0, batch_index=0, draw=0, batch=4, n=49)
    previous = torch.zeros(4, 49, dtype=torch.bool)
    for ratio in [0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99]:
        dropped = dropped_squares(ranks, ratio)
        assert dropped.sum(1).tolist() == [round(ratio * 49)] * 4
        assert not (previous & ~dropped).any()  # masks of one image are nested across ratios
        previous = dropped
    mask = pixel_mask(dropped_squares(ranks, 0.5), (5, 5), (32, 32))
    assert mask.shape == (4, 1, 32, 32)


def test_draws_average_independent_masks(digits_model: nn.Module, digits_100: tuple) -> None:
    one = OcclusionScenario(ratios=[0.5]).run(context(digits_model, digits_100))
    two = OcclusionScenario(ratios=[0.5], draws=2).run(context(digits_model, digits_100))
    assert two[0].n == 200 and two[0].examples is None and one[0].examples is not None
    assert two[0].value != one[0].value  # a second, different mask per image


def test_chunks_merge_into_the_whole_cell(digits_model: nn.Module, digits_100: tuple) -> None:
    scenario = OcclusionScenario(ratios=[0.0, 0.4, 0.8])
    whole = scenario.run(context(digits_model, digits_100))
    halves = [(digits_100[0][:50], digits_100[1][:50]), (digits_100[0][50:], digits_100[1][50:])]
    parts = [scenario.partial(context(digits_model, half, first_batch=i))
             for i, half in enumerate(halves)]
    assert scenario.merge(parts) == whole


@pytest.mark.parametrize("params", [{"ratios": [1.0]}, {"ratios": [-0.1]}, {"ratios": []},
                                    {"ratios": [0.1, 0.1]}, {"grid": "patch"}, {"square": 0},
                                    {"draws": 0}, {"fill": 2}])
def test_occlusion_rejects_bad_params(params: dict) -> None:
    with pytest.raises((pydantic.ValidationError, ValueError)):
        OcclusionScenario.from_params(params)


def test_memory_chunks_do_not_change_the_rows(digits_model: nn.Module, digits_100: tuple,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from robustbench_vit.scenarios import base

    scenario = OcclusionScenario(ratios=[0.2, 0.6], draws=2)
    data = (digits_100[0][:10], digits_100[1][:10])
    whole = scenario.run(context(digits_model, data, batch_size=10))
    monkeypatch.setattr(base, "CHUNK_PIXELS", 16 * 32 * 32)  # 16 copies per forward
    calls = Recorder(digits_model)
    assert scenario.run(context(calls, data, batch_size=10)) == whole
    assert [len(x) for x in calls.seen] == [16, 16, 8]  # 2 ratios x 2 draws x 10 images
