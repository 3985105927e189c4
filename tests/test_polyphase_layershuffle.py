"""Polyphase anchoring (exact circular-shift invariance), LayerShuffle (block-order robustness)."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from defenses.layer_shuffle import LayerShuffle, ShuffledBlocks
from defenses.polyphase import Polyphase, poly_order, polyphase_index
from robustbench_vit import load_suite
from robustbench_vit.api import UnsupportedModel
from robustbench_vit.execution.evaluate import evaluate_cell
from robustbench_vit.models.adapters import Stage, arranged
from robustbench_vit.models.sources import NormalizedModel

SHIFTS = list(itertools.product(range(8), range(8)))


def random_vit(seed: int = 0) -> NormalizedModel:
    """A random-init timm ViT shaped like digits_vit (32px, patch 8, width 64, depth 4, 4 heads)."""
    torch.manual_seed(seed)
    backbone = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                                 patch_size=8, embed_dim=64, depth=4, num_heads=4, num_classes=10)
    return NormalizedModel(backbone).eval()


def polyphase_vit(seed: int = 0) -> nn.Module:
    model = Polyphase().apply(random_vit(seed)).eval()
    with torch.no_grad():  # non-trivial LayerNorm/conv so the position conv matters
        for p in model.backbone.patch_embed.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def shift_report(model: nn.Module, x: torch.Tensor) -> tuple[bool, float]:
    """(predictions equal for every circular shift 0..7 x 0..7, largest logit difference)."""
    with torch.no_grad():
        ref = model(x)
        outs = [model(torch.roll(x, s, dims=(2, 3))) for s in SHIFTS]
    same = all(torch.equal(o.argmax(1), ref.argmax(1)) for o in outs)
    return same, max(float((o - ref).abs().max()) for o in outs)


# --- PolyOrder -----------------------------------------------------------------------------------

def test_poly_order_anchors_the_max_norm_component() -> None:
    x = torch.zeros(2, 1, 8, 8)
    x[0, 0, 2::4, 3::4] = 1.0      # image 0: component (2, 3) has the energy
    x[1, 0, 1::4, 0::4] = 2.0      # image 1: (1, 0) beats (3, 3)
    x[1, 0, 3::4, 3::4] = 1.5
    assert polyphase_index(x, 4).tolist() == [[2, 3], [1, 0]]
    out = poly_order(x, 4)
    assert torch.equal(out[0], torch.roll(x[0], (-2, -3), dims=(1, 2)))
    assert torch.equal(out[1], torch.roll(x[1], (-1, 0), dims=(1, 2)))
    assert out[0, 0, 0::4, 0::4].eq(1).all() and out[1, 0, 0::4, 0::4].eq(2).all()


def test_poly_order_takes_the_first_component_on_ties() -> None:
    x = torch.zeros(3, 2, 8, 8)
    x[0] = 1.0                       # all components tie: (0, 0)
    x[1, :, 1::2, 0::2] = 1.0        # (1, 0) and (0, 1) tie: (0, 1) comes first
    x[1, :, 0::2, 1::2] = -1.0
    x[2, 1, 1::2, 1::2] = 3.0        # energy in one channel counts like any other
    assert polyphase_index(x, 2).tolist() == [[0, 0], [0, 1], [1, 1]]


def test_poly_order_is_shift_covariant_and_passes_gradients() -> None:
    x = images(3).requires_grad_(True)
    anchored = poly_order(x, 8)
    for s in [(1, 0), (5, 7), (3, 3)]:  # same anchored image, up to whole-patch rolls
        other = poly_order(torch.roll(x, s, dims=(2, 3)), 8)
        assert polyphase_index(other, 8).eq(0).all()
        for k in range(len(x)):
            assert any(torch.equal(other[k], torch.roll(anchored[k], (8 * a, 8 * b), dims=(1, 2)))
                       for a in range(4) for b in range(4))
    anchored.pow(2).sum().backward()
    assert torch.allclose(x.grad, 2 * x.detach())  # a permutation: d(sum x^2)/dx = 2x


def test_poly_order_rejects_sides_not_divisible_by_the_patch() -> None:
    with pytest.raises(ValueError, match="divisible"):
        poly_order(torch.rand(1, 3, 30, 32), 8)


# --- polyphase model -----------------------------------------------------------------------------

def test_random_polyphase_vit_is_invariant_to_every_circular_shift() -> None:
    model = polyphase_vit()
    assert model.backbone.pos_embed is None
    same, worst = shift_report(model, images(6))
    assert same and worst < 1e-4


def test_plain_vit_is_not_shift_invariant() -> None:
    same, worst = shift_report(random_vit(), images(6))
    assert worst > 1e-2  # the invariance above is the defense's doing, not the test's


def test_polyphase_gradients_reach_the_input() -> None:
    model = polyphase_vit()
    x = images(2).requires_grad_(True)
    model(x).logsumexp(1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()


def test_polyphase_loads_base_weights_and_rejects_non_vits() -> None:
    base = random_vit()
    model = Polyphase().apply(copy.deepcopy(base))
    result = model.load_state_dict(base.state_dict(), strict=False)
    assert result.unexpected_keys == ["backbone.pos_embed"]
    assert sorted(k.split(".")[-2] for k in result.missing_keys) == ["norm", "norm", "pos_conv",
                                                                      "pos_conv"]
    torch.manual_seed(0)
    resnet = NormalizedModel(timm.create_model("test_resnet", pretrained=False, num_classes=10))
    with pytest.raises(UnsupportedModel, match="VisionTransformer"):
        Polyphase().apply(resnet)


# --- LayerShuffle --------------------------------------------------------------------------------

@pytest.mark.parametrize("slot", [False, True])
def test_layer_shuffle_permutes_in_training_and_runs_in_order_in_eval(slot: bool) -> None:
    base = random_vit()
    model = LayerShuffle(slot_embedding=slot).apply(copy.deepcopy(base))
    model.load_state_dict(base.state_dict(), strict=False)
    blocks = model.backbone.blocks
    assert isinstance(blocks, ShuffledBlocks) and len(blocks) == 4
    x = images(2)
    model.train()
    outs = []
    with torch.no_grad():
        for seed in range(4):
            torch.manual_seed(seed)
            outs.append(model(x))
    assert max(float((o - outs[0]).abs().max()) for o in outs[1:]) > 1e-3
    model.eval()
    with torch.no_grad():
        out = model(x)
        if not slot:  # no new parameters: the eval model is exactly the base model
            assert torch.equal(out, base(x))
        with arranged(Stage("blocks", model.backbone, "blocks"), (0, 1, 2, 3)):
            manual = model(x)
    assert torch.equal(out, manual)


def test_slot_embedding_follows_execution_position_not_block() -> None:
    model = LayerShuffle(slot_embedding=True).apply(random_vit()).eval()
    slot = model.backbone.slot_embed
    with torch.no_grad():
        slot.embedding.copy_(torch.randn_like(slot.embedding))
    bb = model.backbone
    x = images(2)

    def by_hand(order: tuple[int, ...]) -> torch.Tensor:
        tokens = bb.norm_pre(bb._pos_embed(bb.patch_embed((x - model.mean) / model.std)))
        for position, i in enumerate(order):
            tokens = bb.blocks[i].forward(slot(tokens, position))  # .forward: no hooks
        return bb.forward_head(bb.norm(tokens))

    with torch.no_grad():
        for order in [(0, 1, 2, 3), (3, 1, 0, 2), (2, 0)]:  # the last one prunes two blocks
            with arranged(Stage("blocks", bb, "blocks"), order):
                got = model(x)
            expected = by_hand(order)
            assert torch.allclose(got, expected, atol=1e-6)
        copied = copy.deepcopy(model)  # hooks follow the copy's own slot module
        copied.backbone.slot_embed.embedding.zero_()
        assert not torch.allclose(copied(x), model(x))


# --- through the zoo (fine-tunes digits_vit into the test cache) --------------------------------

SUITE = """
suite: defenses_test
seed: 0
data: {{dataset: digits, split: test, image_size: 32, n_examples: 450, batch_size: 150}}
models:
  - name: vit
    source: zoo:digits_vit
    defenses: [none, {defense}]
scenarios:
{scenarios}
"""


def cell_rows(tmp_path: Path, defense: str, scenarios: str) -> dict[tuple[str, int], dict]:
    """{(defense, scenario index): {metric: [values]}} of a digits suite with `defense`, none."""
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(defense=defense, scenarios=scenarios))
    cells = load_suite(path).cells("cpu")
    kinds = [c.scenario_kind + repr(sorted(c.scenario_params.items())) for c in cells]
    order = list(dict.fromkeys(kinds))
    rows: dict[tuple[str, int], dict] = {}
    for cell, kind in zip(cells, kinds, strict=True):
        result = evaluate_cell(cell)
        assert result.status == "ok", result.error
        metrics: dict[str, list[float]] = {}
        for m in result.measurements:
            metrics.setdefault(m.metric, []).append(m.value)
        rows[(cell.defense, order.index(kind))] = metrics
    return rows


@pytest.mark.slow
def test_layer_shuffle_digits_model_survives_block_reordering(tmp_path: Path) -> None:
    rows = cell_rows(tmp_path, "layer_shuffle", "  - {kind: layer_order, permutations: 10}")
    base, shuffled = rows[("none", 0)], rows[("layer_shuffle", 0)]
    mean = {k: sum(r["order_accuracy"]) / len(r["order_accuracy"])
            for k, r in (("none", base), ("layer_shuffle", shuffled))}
    assert mean["layer_shuffle"] >= mean["none"] + 0.20, mean
    assert shuffled["accuracy"][0] >= 0.85


@pytest.mark.slow
def test_polyphase_digits_model_is_exactly_circular_shift_consistent(tmp_path: Path) -> None:
    # the defaults (60 epochs at 3e-3, distilled from the base) reach 0.944 (base 0.973)
    rows = cell_rows(tmp_path, "{name: polyphase}",
                     "  - {kind: clean}\n"
                     "  - {kind: shift, mode: circular, max_shift: 7, passes: 3}")
    assert rows[("polyphase", 1)]["shift_consistency"] == [1.0]
    assert rows[("none", 1)]["shift_consistency"][0] < 1.0  # the base model is not invariant
    assert rows[("polyphase", 0)]["accuracy"][0] >= rows[("none", 0)]["accuracy"][0] - 0.05
