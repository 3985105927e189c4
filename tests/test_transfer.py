"""Transfer scenarios: DTA on fine-tuned models, transfer between compressed models, fine-tuning
schemes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from robustbench_vit import load_suite
from robustbench_vit.core.errors import SuiteError
from robustbench_vit.core.registry import ATTACKS
from robustbench_vit.execution.evaluate import evaluate_cell
from robustbench_vit.models.compression import compress
from robustbench_vit.models.finetune import SCHEMES, LoRALinear, finalize
from robustbench_vit.scenarios.transfer_compressed import CompressedTransfer
from robustbench_vit.scenarios.transfer_dta import random_noise

SUITE = """
suite: transfer_test
data: {{dataset: digits, split: test, image_size: 32, n_examples: {n}, batch_size: 64}}
models:
{models}
scenarios:
{scenarios}
"""


def suite_cells(tmp_path: Path, models: str, scenarios: str, n: int = 96) -> list:
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(models=models, scenarios=scenarios, n=n))
    return load_suite(path).cells("cpu")


def metrics_by(result, key: str) -> dict:
    """{extra[key]: value} of the transfer_success_rate rows of a cell result."""
    assert result.status == "ok", result.error
    return {m.extra[key]: m for m in result.measurements if m.metric == "transfer_success_rate"}


# --- DTA ----------------------------------------------------------------------------------------

DTA_MODELS = """  - {name: vit, source: "zoo:digits_vit"}
  - {name: parity, source: "zoo:digits_vit_parity_linear", data: {task: parity}}"""


@pytest.fixture(scope="module")
def dta_results(tmp_path_factory: pytest.TempPathFactory, digits_model: nn.Module) -> dict:
    tmp = tmp_path_factory.mktemp("dta")
    cells = suite_cells(tmp, DTA_MODELS, "  - {kind: transfer, name: dta, source: vit, steps: 10}")
    return {c.model.name: evaluate_cell(c) for c in cells}


def test_dta_beats_random_noise_on_the_fine_tuned_model(dta_results: dict) -> None:
    rows = metrics_by(dta_results["parity"], "method")
    assert set(rows) == {"dta", "pgd_source_head", "feature_last", "random_noise"}
    assert rows["dta"].value >= rows["random_noise"].value + 0.05
    assert rows["dta"].extra["attack_layer"] in range(4)
    assert rows["dta"].n > 80  # clean-correct images of the victim


def test_dta_is_skipped_on_the_source_itself(dta_results: dict) -> None:
    assert dta_results["vit"].status == "skipped"
    assert "source" in dta_results["vit"].error


def test_dta_source_must_name_a_model(tmp_path: Path) -> None:
    with pytest.raises(SuiteError) as err:
        suite_cells(tmp_path, DTA_MODELS, "  - {kind: transfer, name: dta, source: vitt}")
    assert ("scenarios[0].source", ) == tuple(p for p, _ in err.value.problems)
    assert "did you mean 'vit'" in err.value.problems[0][1]


def test_unknown_transfer_name_suggests(tmp_path: Path) -> None:
    with pytest.raises(SuiteError) as err:
        suite_cells(tmp_path, DTA_MODELS, "  - {kind: transfer, name: dtaa, source: vit}")
    path, message = err.value.problems[0]
    assert path == "scenarios[0].name" and "'dta'" in message


def test_random_noise_is_within_eps() -> None:
    x = torch.rand(4, 3, 8, 8)
    adv = random_noise(x, 4 / 255, seed=0)
    assert (adv - x).abs().max() <= 4 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1


# --- compressed transfer --------------------------------------------------------------------------

COMP = "  - {kind: transfer, name: compressed, targets: [int8, prune50], cache: false}"


@pytest.fixture(scope="module")
def compressed_cell(tmp_path_factory: pytest.TempPathFactory, digits_model: nn.Module):
    tmp = tmp_path_factory.mktemp("comp")
    (cell,) = suite_cells(tmp, '  - {name: vit, source: "zoo:digits_vit"}', COMP, n=64)
    return cell


def test_transfer_matrix_shape_and_white_box_diagonal(compressed_cell, digits_model) -> None:
    result = evaluate_cell(compressed_cell)
    assert result.status == "ok", result.error
    pairs = {(m.extra["source"], m.extra["target"]): m for m in result.measurements
             if m.metric == "transfer_success_rate"}
    names = ["original", "int8", "prune50"]
    assert set(pairs) == {(s, t) for s in names for t in names}
    # the diagonal for the original model is exactly the white-box PGD attack
    from robustbench_vit.execution.evaluate import build_data

    data = build_data(compressed_cell, digits_model)
    x, y = (torch.cat(t) for t in zip(*data.loader, strict=False))
    pgd = ATTACKS.get("pgd")(eps=8 / 255, steps=10)
    adv = torch.cat([pgd.perturb(digits_model, x[i:i + 64], y[i:i + 64], seed=0 + i)
                     for i in range(0, len(x), 64)])
    with torch.no_grad():
        correct = digits_model(x).argmax(1) == y
        fooled = correct & (digits_model(adv).argmax(1) != y)
    assert pairs[("original", "original")].value == pytest.approx(
        float(fooled.sum() / correct.sum()))
    # attacks crafted on a compressed model's own surrogate beat random noise on it
    with torch.no_grad():
        noise_fooled = correct & (digits_model(random_noise(x, 8 / 255, 0)).argmax(1) != y)
    for name in ("int8", "prune50"):
        assert pairs[(name, name)].value > float(noise_fooled.sum() / correct.sum()) + 0.3


def test_examples_are_crafted_once_per_source(compressed_cell, monkeypatch) -> None:
    calls = []
    original = CompressedTransfer.craft

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(CompressedTransfer, "craft", counting)
    assert evaluate_cell(compressed_cell).status == "ok"
    assert len(calls) == 3  # original, int8, prune50 — not 9 pairs


def test_crafted_examples_are_reused_from_the_cache(tmp_path, monkeypatch, digits_model) -> None:
    monkeypatch.setenv("RBV_CACHE", str(tmp_path / "cache"))
    import shutil

    from robustbench_vit.core.cache import cache_dir
    zoo = Path(__file__).resolve().parents[1] / ".cache" / "test" / "zoo"
    shutil.copytree(zoo, cache_dir("zoo"), dirs_exist_ok=True)
    (cell,) = suite_cells(tmp_path, '  - {name: vit, source: "zoo:digits_vit"}',
                          "  - {kind: transfer, name: compressed, targets: [prune30]}", n=32)
    first = evaluate_cell(cell)
    monkeypatch.setattr(CompressedTransfer, "craft", lambda *a, **k: pytest.fail("re-crafted"))
    second = evaluate_cell(cell)
    assert [m.value for m in first.measurements] == [m.value for m in second.measurements]


def test_int8_surrogate_agrees_with_the_quantized_model(digits_model, digits_batch) -> None:
    x, _ = digits_batch
    c = compress(digits_model, "int8")
    with torch.no_grad():
        agree = (c.target(x).argmax(1) == c.surrogate(x).argmax(1)).float().mean()
    assert agree >= 0.95
    xg = x[:4].clone().requires_grad_(True)
    c.surrogate(xg).sum().backward()  # straight-through gradient reaches the input
    assert xg.grad is not None and xg.grad.abs().sum() > 0


@pytest.mark.parametrize("amount", [30, 50, 70])
def test_pruning_zeroes_the_requested_share(digits_model, amount: int) -> None:
    pruned = compress(digits_model, f"prune{amount}").target
    weights = torch.cat([m.weight.flatten() for m in pruned.modules() if isinstance(m, nn.Linear)])
    assert (weights == 0).float().mean().item() == pytest.approx(amount / 100, abs=0.01)
    original = [m.weight for m in digits_model.modules() if isinstance(m, nn.Linear)]
    assert all((w != 0).float().mean() > 0.99 for w in original)  # the source is untouched


def test_bad_compression_target_is_located(tmp_path: Path) -> None:
    with pytest.raises(SuiteError) as err:
        suite_cells(tmp_path, '  - {name: vit, source: "zoo:digits_vit"}',
                    "  - {kind: transfer, name: compressed, targets: [int4]}")
    assert err.value.problems[0][0] == "scenarios[0].targets"


# --- fine-tuning schemes --------------------------------------------------------------------------

def test_lora_merge_is_exact() -> None:
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 6), rank=2, alpha=2.0)
    nn.init.normal_(layer.lora_b)
    x = torch.randn(5, 8)
    assert torch.allclose(layer(x), layer.merged()(x), atol=1e-5)


@pytest.mark.parametrize("scheme", SCHEMES.names())
def test_schemes_choose_what_trains(scheme: str) -> None:
    import timm

    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=32,
                              depth=3, num_heads=2, num_classes=2)
    SCHEMES.get(scheme)(model, lora_rank=2, last_blocks=1)
    trains = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("head") for n in trains)
    first_block_base = {n for n in trains if n.startswith("blocks.0.") and "lora" not in n}
    assert bool(first_block_base) == (scheme == "full")
    finalize(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    model(torch.rand(1, 3, 32, 32))


# --- patch attack ---------------------------------------------------------------------------------

def patch_attack(**kw):
    return ATTACKS.get("patch")(**{"steps": 10, **kw})


def test_patch_changes_only_one_token_aligned_square(digits_model, digits_batch) -> None:
    x, y = digits_batch
    x, y = x[:16], y[:16]
    adv = patch_attack(patch_size=8).perturb(digits_model, x, y, seed=0)
    assert adv.min() >= 0 and adv.max() <= 1
    for changed in ((adv - x).abs().sum(1) > 0):
        rows, cols = torch.nonzero(changed, as_tuple=True)
        if len(rows):
            assert rows.min() % 8 == 0 and cols.min() % 8 == 0
            assert rows.max() - rows.min() < 8 and cols.max() - cols.min() < 8


def test_bigger_patches_fool_at_least_as_often(digits_model, digits_batch) -> None:
    x, y = digits_batch
    rates = []
    for size in (8, 16):
        _, stats = patch_attack(patch_size=size).perturb_with_stats(digits_model, x[:24], y[:24],
                                                                    seed=0)
        hits, total = stats["attack_success_rate"]
        rates.append(hits / total)
    assert rates[1] >= rates[0] and rates[1] > 0.5


def test_patch_size_must_fit_the_token_grid(digits_model, digits_batch) -> None:
    x, y = digits_batch
    with pytest.raises(ValueError, match="multiple of the model's token patch size 8x8"):
        patch_attack(patch_size=4).perturb(digits_model, x[:2], y[:2], seed=0)


def test_natural_patch_pastes_a_corrupted_square(digits_model, digits_batch) -> None:
    x, y = digits_batch
    attack = patch_attack(patch_size=16, content="corruption:gaussian_noise")
    adv, stats = attack.perturb_with_stats(digits_model, x[:8], y[:8], seed=0)
    hits, total = stats["attack_success_rate"]
    assert total == 8 * 4 and 0 <= hits <= total
    assert ((adv - x[:8]).abs() > 0).any()


def test_unknown_patch_content_is_a_param_error() -> None:
    from robustbench_vit.core.params import ParamError, validate_params

    with pytest.raises(ParamError, match="did you mean 'fog'"):
        validate_params(ATTACKS.get("patch"), {"content": "corruption:fogg"})


# --- EOT -----------------------------------------------------------------------------------------

class _Noisy(nn.Module):
    """A randomized model: logits of a fixed linear map plus fresh noise each call."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1)) + torch.randn(len(x), 3)


def test_eot_averages_many_random_draws() -> None:
    from robustbench_vit.models.eot import EOTModel

    torch.manual_seed(0)
    model = _Noisy()
    x = torch.rand(2, 3, 2, 2)
    single = torch.stack([model(x) for _ in range(50)]).std(0).mean()
    averaged = torch.stack([EOTModel(model, 64)(x) for _ in range(50)]).std(0).mean()
    assert averaged < single / 4  # sqrt(64) = 8 in expectation
    with pytest.raises(ValueError):
        EOTModel(model, 0)


def test_attack_scenario_accepts_eot(tmp_path: Path, digits_model) -> None:
    (cell,) = suite_cells(tmp_path, '  - {name: vit, source: "zoo:digits_vit"}',
                          "  - {kind: attack, name: pgd, eps: 8/255, steps: 3, eot: 2}", n=32)
    assert cell.scenario_params["eot"] == 2
    result = evaluate_cell(cell)
    assert result.status == "ok", result.error
    with pytest.raises(SuiteError) as err:
        suite_cells(tmp_path, '  - {name: vit, source: "zoo:digits_vit"}',
                    "  - {kind: attack, name: pgd, eot: 0}")
    assert err.value.problems[0][0] == "scenarios[0].eot"
