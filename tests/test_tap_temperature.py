"""Attention temperature scaling and TAP + ADL: exactness, flattening, pooling, loss, tuning."""

from __future__ import annotations

import copy
import functools
import logging
import shutil

import pytest
import torch
import torch.nn.functional as F
from timm.layers import Attention
from torch import nn

from defenses.tap_adl import (
    TapAdl,
    TokenAwarePooling,
    attention_diversification,
    dilated_average,
)
from defenses.temperature_scaling import TemperatureScaling, tempered_modules
from robustbench_vit.api import UnsupportedModel, tempered
from robustbench_vit.models.vit import backbone_of

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


def recorded_maps(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Head-averaged attention maps of every block for `x` (eval-mode model, recording them)."""
    modules = tempered_modules(model)
    model.eval()
    for m in modules:
        m.record_attention = True
        m.train()  # attention records in training mode; BatchNorm and the rest stay in eval mode
    try:
        with torch.no_grad():
            model(x)
        return [m.last_attn for m in modules]  # type: ignore[misc]
    finally:
        for m in modules:
            m.eval()
            m.last_attn = None


def row_entropy(maps: list[torch.Tensor]) -> float:
    """Mean entropy of the attention rows over all blocks."""
    return float(torch.stack([-(m * m.clamp_min(1e-12).log()).sum(-1).mean() for m in maps]).mean())


def temperature_maps(model: nn.Module, x: torch.Tensor, temperature: float) -> list[torch.Tensor]:
    tempered = TemperatureScaling(temperature=temperature).apply(copy.deepcopy(model))
    return recorded_maps(tempered, x)


def test_temperature_one_is_the_undefended_model(digits_model: nn.Module,
                                                 digits_batch: Batch) -> None:
    x = digits_batch[0]
    tempered = TemperatureScaling(temperature=1.0).apply(copy.deepcopy(digits_model)).eval()
    with torch.no_grad():
        assert torch.equal(tempered(x), digits_model(x))


def test_temperature_changes_logits(digits_model: nn.Module, digits_batch: Batch) -> None:
    x = digits_batch[0]
    tempered = TemperatureScaling(temperature=4.0).apply(copy.deepcopy(digits_model)).eval()
    with torch.no_grad():
        assert not torch.allclose(tempered(x), digits_model(x), atol=1e-3)


def test_explicit_path_matches_fused(digits_model: nn.Module, digits_batch: Batch) -> None:
    x = digits_batch[0][:8]
    tempered = TemperatureScaling(temperature=3.0).apply(copy.deepcopy(digits_model)).eval()
    with torch.no_grad():
        fused = tempered(x)
        for m in tempered_modules(tempered):
            m.fused_attn = False
        assert torch.allclose(tempered(x), fused, atol=1e-5)


def test_higher_temperature_flattens_attention(digits_model: nn.Module,
                                               digits_batch: Batch) -> None:
    x = digits_batch[0][:16]
    entropies = [row_entropy(temperature_maps(digits_model, x, t)) for t in (1.0, 2.0, 4.0)]
    log.info("attention row entropy at T=1,2,4: %s", entropies)
    assert entropies[0] < entropies[1] < entropies[2]


def test_temperature_keeps_gradients(digits_model: nn.Module, digits_batch: Batch) -> None:
    x, y = digits_batch[0][:8].clone().requires_grad_(True), digits_batch[1][:8]
    tempered = TemperatureScaling(temperature=2.0).apply(copy.deepcopy(digits_model)).eval()
    nn.functional.cross_entropy(tempered(x), y).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def old_fused_forward(attn: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None,
                      is_causal: bool = False, *, temperature: float) -> torch.Tensor:
    """The removed PatchedAttention's fused eval forward (no gate): SDPA at scale d^−½ / T."""
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                         scale=attn.scale / temperature)
    return attn.proj(attn.norm(out.transpose(1, 2).reshape(b, n, attn.attn_dim)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # float64 sees a 1-ulp scale
@pytest.mark.parametrize("head_dim", [8, 12, 16, 24, 32])  # all but 16: 1/√d ≠ d ** -0.5
@pytest.mark.parametrize("temperature", [0.5, 2.0, 3.0])
def test_tempered_sdpa_is_the_old_scale_bit_for_bit(head_dim: int, temperature: float,
                                                    dtype: torch.dtype) -> None:
    torch.manual_seed(head_dim)
    attn = Attention(dim=2 * head_dim, num_heads=2).to(dtype).eval()
    assert attn.fused_attn and attn.scale == head_dim ** -0.5
    x = torch.randn(3, 17, 2 * head_dim, dtype=dtype)
    with torch.no_grad():
        expected = old_fused_forward(attn, x, temperature=temperature)
        assert torch.equal(tempered(attn, temperature=temperature)(x), expected)


def test_digits_temperature_is_the_old_defense_bit_for_bit(digits_model: nn.Module,
                                                           digits_batch: Batch) -> None:
    x = digits_batch[0]
    old = copy.deepcopy(digits_model).eval()
    for block in backbone_of(old).blocks:
        block.attn.forward = functools.partial(old_fused_forward, block.attn, temperature=2.0)
    new = TemperatureScaling(temperature=2.0).apply(copy.deepcopy(digits_model)).eval()
    assert len(tempered_modules(new)) == len(backbone_of(new).blocks)
    with torch.no_grad():
        assert torch.equal(new(x), old(x))


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_temperature_must_be_positive(temperature: float) -> None:
    with pytest.raises(ValueError):
        TemperatureScaling(temperature=temperature)


def test_models_without_attention_blocks_are_refused() -> None:
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    with pytest.raises(UnsupportedModel, match="no attention modules known for Sequential"):
        TemperatureScaling().apply(cnn)
    with pytest.raises(UnsupportedModel, match="no attention modules known for Sequential"):
        TapAdl().apply(cnn)


def test_tap_keeps_shapes_and_weights_sum_to_one() -> None:
    torch.manual_seed(0)
    tap = TokenAwarePooling(16, 1, (4, 4)).eval()
    nn.init.normal_(tap.predictor[2].weight)  # a non-uniform mix
    x = torch.randn(3, 17, 16)
    assert tap(x).shape == x.shape
    weights = tap.branch_weights(tap.to_grid(x[:, 1:]))
    assert weights.shape == (3, 4, 4, 4)
    assert torch.allclose(weights.sum(1), torch.ones(3, 4, 4), atol=1e-6)
    assert weights.std() > 0.01
    assert torch.equal(tap(x)[:, :1], x[:, :1])  # CLS passes unpooled


def test_fresh_tap_weights_are_uniform() -> None:
    tap = TokenAwarePooling(16, 1, (4, 4)).eval()
    weights = tap.branch_weights(torch.randn(2, 16, 4, 4))
    assert torch.allclose(weights, torch.full_like(weights, 0.25))


def test_dilated_average_divides_by_nine() -> None:
    grid = torch.ones(1, 2, 5, 5)
    assert torch.equal(dilated_average(grid, 0), grid)
    pooled = dilated_average(grid, 2)
    assert pooled.shape == grid.shape
    assert pooled[0, 0, 2, 2] == pytest.approx(1.0)  # all 9 taps inside
    assert pooled[0, 0, 0, 0] == pytest.approx(4 / 9)  # corner: 4 taps inside, zero padding


def test_tap_identity_branch_reproduces_base(digits_model: nn.Module,
                                             digits_batch: Batch) -> None:
    x = digits_batch[0]
    model = TapAdl().apply(copy.deepcopy(digits_model)).eval()

    def identity_only(grid: torch.Tensor) -> torch.Tensor:
        w = torch.zeros(grid.shape[0], 4, *grid.shape[2:])
        w[:, 0] = 1.0
        return w

    for block in backbone_of(model).blocks:
        block.attn.tap.branch_weights = identity_only
    with torch.no_grad():
        assert torch.allclose(model(x), digits_model(x), atol=1e-5)


def test_tap_changes_the_attention_input(digits_model: nn.Module, digits_batch: Batch) -> None:
    x = digits_batch[0]
    model = TapAdl().apply(copy.deepcopy(digits_model)).eval()
    with torch.no_grad():
        assert not torch.allclose(model(x), digits_model(x), atol=1e-3)


def test_tap_state_dict_keys_are_unchanged(digits_model: nn.Module) -> None:
    model = TapAdl().apply(copy.deepcopy(digits_model))
    added = set(model.state_dict()) - set(digits_model.state_dict())
    depth = len(backbone_of(model).blocks)
    assert added and all(".attn.tap.predictor." in k for k in added)
    assert {k.split(".attn.tap.")[0] for k in added} == \
        {f"backbone.blocks.{i}" for i in range(depth)}


def test_adl_lower_for_uniform_than_peaked_attention() -> None:
    n = 10
    uniform = torch.full((2, n, n), 1.0 / n)
    peaked = torch.full((2, n, n), 0.1 / (n - 1))
    peaked[:, :, 3] = 0.9  # every row attends to the same token
    diverse = torch.eye(n).expand(2, n, n) * 0.9 + 0.1 / n  # each row to a different token
    adl = {k: float(attention_diversification([v])) for k, v in
           {"uniform": uniform, "peaked": peaked, "diverse": diverse}.items()}
    assert adl["uniform"] < adl["peaked"]
    assert adl["diverse"] < adl["peaked"]
    assert adl["peaked"] == pytest.approx(1.0, abs=1e-5)


def test_adl_weight_zero_gives_no_loss(digits_model: nn.Module, digits_batch: Batch) -> None:
    x, y = digits_batch
    defense = TapAdl(adl_weight=0.0)
    model = defense.apply(copy.deepcopy(digits_model)).train()
    assert defense.training_loss(model, x, y, model(x)) is None


@pytest.fixture(scope="module")
def fine_tuned(digits_model: nn.Module,
               tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, nn.Module, TapAdl]:
    """(base model with patched attention, tap_adl fine-tuned by the zoo in a temporary cache)."""
    from robustbench_vit.core.cells import ModelConfig
    from robustbench_vit.models.defended import load_defended_model
    from robustbench_vit.models.zoo import ZOO, checkpoint_path

    defense = TapAdl()
    base_ckpt = checkpoint_path("digits_vit", ZOO.get("digits_vit"))
    assert base_ckpt.is_file(), "digits_model fixture trains the base model first"
    cache = tmp_path_factory.mktemp("rbv_cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("RBV_CACHE", str(cache))
    try:
        (cache / "zoo").mkdir()
        for suffix in (".safetensors", ".json"):
            source = base_ckpt.with_suffix(suffix)
            shutil.copy(source, cache / "zoo" / source.name)
        base_cfg = ModelConfig(name="vit", source="zoo:digits_vit")
        tuned = load_defended_model(base_cfg, defense, "cpu")
    finally:
        mp.undo()
    base = TemperatureScaling(temperature=1.0).apply(copy.deepcopy(digits_model)).eval()
    return base, tuned, defense


def accuracy_on(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


@pytest.mark.slow
def test_adl_falls_during_fine_tuning(fine_tuned: tuple[nn.Module, nn.Module, TapAdl],
                                      digits_batch: Batch) -> None:
    base, tuned, _ = fine_tuned  # ADL starts from the base model's attention (≈0.5 on digits)
    x = digits_batch[0]
    before = float(attention_diversification(recorded_maps(base, x)))
    after = float(attention_diversification(recorded_maps(tuned, x)))
    log.info("ADL before %.4f, after fine-tuning %.4f", before, after)
    assert after < 0.75 * before


@pytest.mark.slow
def test_fine_tuned_tap_adl_keeps_clean_accuracy(fine_tuned: tuple[nn.Module, nn.Module, TapAdl],
                                                 digits_model: nn.Module) -> None:
    from robustbench_vit.data.datasets import Digits

    x, y = Digits(split="test").load().tensors
    base, tuned = accuracy_on(digits_model, x, y), accuracy_on(fine_tuned[1], x, y)
    log.info("clean accuracy: base %.4f, tap_adl %.4f", base, tuned)
    assert tuned >= base - 0.05
