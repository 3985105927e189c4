"""Transfer scenarios: DTA on fine-tuned models, transfer between compressed models, fine-tuning
schemes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from robustbench_vit import load_suite
from robustbench_vit.core.errors import SuiteError, UnsupportedModel
from robustbench_vit.core.registry import ATTACKS, ZOO
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


# the attacker's own parity fine-tune of the source, used as a surrogate for the parity victim
SURROGATE_MODELS = DTA_MODELS + """
  - {name: attacker, source: "zoo:digits_vit_parity_full", data: {task: parity}}"""
SURROGATE_DTA = "  - {kind: transfer, name: dta, source: vit, steps: 10, surrogate: attacker}"


@pytest.fixture(scope="module")
def surrogate_results(tmp_path_factory: pytest.TempPathFactory, digits_model: nn.Module) -> dict:
    tmp = tmp_path_factory.mktemp("dta_surrogate")
    return {c.model.name: evaluate_cell(c)
            for c in suite_cells(tmp, SURROGATE_MODELS, SURROGATE_DTA)}


def test_surrogate_pgd_is_reported_on_the_same_images(dta_results: dict,
                                                      surrogate_results: dict) -> None:
    rows = metrics_by(surrogate_results["parity"], "method")
    assert set(rows) == {"dta", "pgd_source_head", "feature_last", "random_noise",
                         "pgd_surrogate"}
    assert len({r.n for r in rows.values()}) == 1  # one set of clean-correct victim images
    # the other methods' numbers do not change when a surrogate is added
    without = metrics_by(dta_results["parity"], "method")
    assert {m: (r.value, r.n) for m, r in without.items()} == \
        {m: (r.value, r.n) for m, r in rows.items() if m != "pgd_surrogate"}
    # an attacker who fine-tuned on the victim's task transfers far better than random noise
    assert rows["pgd_surrogate"].value >= rows["random_noise"].value + 0.2
    assert rows["pgd_surrogate"].extra["attack_layer"] is None


def test_dta_is_skipped_on_the_surrogate_itself(surrogate_results: dict) -> None:
    assert surrogate_results["attacker"].status == "skipped"
    assert "surrogate itself" in surrogate_results["attacker"].error


def test_surrogate_pgd_attacks_the_victims_true_labels(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from robustbench_vit.scenarios.transfer_dta import DTAScenario

    seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    class Spy:
        def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                    seed: int) -> torch.Tensor:
            with torch.no_grad():
                seen.append((model(x).shape[1], y.clone(), x.clone()))
            return x

    monkeypatch.setattr(DTAScenario, "pgd", lambda self: Spy())
    scenario = SURROGATE_DTA.replace("}", ", layer: 0, baselines: false}")
    cell = next(c for c in suite_cells(tmp_path, SURROGATE_MODELS, scenario, n=32)
                if c.model.name == "parity")
    rows = metrics_by(evaluate_cell(cell), "method")
    assert rows["pgd_surrogate"].value == 0  # the spy returned the clean images
    classes, y, x = (torch.cat([torch.tensor([s[0]]) for s in seen]),
                     torch.cat([s[1] for s in seen]), torch.cat([s[2] for s in seen]))
    assert set(classes.tolist()) == {2} and len(y) == rows["pgd_surrogate"].n
    from robustbench_vit.models.sources import build_model

    victim = build_model(cell.model, "cpu")
    with torch.no_grad():  # the images the victim gets right, with their true labels
        assert torch.equal(victim(x).argmax(1), y)


def test_a_surrogate_of_another_task_is_not_applicable(tmp_path: Path) -> None:
    scenario = '  - {kind: transfer, name: dta, source: vit, surrogate: "zoo:digits_vit"}'
    cell = next(c for c in suite_cells(tmp_path, DTA_MODELS, scenario, n=8)
                if c.model.name == "parity")
    assert cell.references["surrogate"].source == "zoo:digits_vit"
    result = evaluate_cell(cell)
    assert result.status == "skipped" and "predicts 10 classes" in result.error


def test_dta_surrogate_must_name_a_model(tmp_path: Path) -> None:
    with pytest.raises(SuiteError) as err:
        suite_cells(tmp_path, DTA_MODELS, SURROGATE_DTA)
    assert [p for p, _ in err.value.problems] == ["scenarios[0].surrogate"]


def test_zoo_models_named_by_scenarios_are_trained_before_the_cells(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from robustbench_vit.execution.run import prepare
    from robustbench_vit.models import zoo

    scenario = ('  - {kind: transfer, name: dta, source: vit, '
                'surrogate: "zoo:digits_vit_shapes_surrogate"}')
    cells = suite_cells(tmp_path, DTA_MODELS, scenario)
    trained: list[str] = []
    monkeypatch.setattr(zoo, "ensure_trained", lambda name, device: trained.append(name))
    prepare(cells)
    assert sorted(trained) == ["digits_vit", "digits_vit_parity_linear",
                               "digits_vit_shapes_surrogate"]


def test_a_zoo_victim_is_not_fine_tuned_from_a_timm_source() -> None:
    from robustbench_vit.core.cells import ModelConfig
    from robustbench_vit.scenarios.base import PlanContext
    from robustbench_vit.scenarios.transfer_dta import DTAScenario

    victim = ModelConfig(name="parity", source="zoo:digits_vit_parity_linear", fingerprint="v")
    refs = {"zoo:digits_vit": ModelConfig(name="vit", source="zoo:digits_vit", fingerprint="s"),
            "timm:vit_tiny": ModelConfig(name="tiny", source="timm:vit_tiny_patch16_224",
                                         fingerprint="t"),
            "zoo:digits_cnn": ModelConfig(name="cnn", source="zoo:digits_cnn", fingerprint="c")}

    def reason(source: str, model: ModelConfig = victim) -> str | None:
        ctx = PlanContext(model=nn.Identity(), model_config=model,
                          references={"source": refs[source]})
        return DTAScenario(source=source).unsupported(ctx)

    assert reason("zoo:digits_vit") is None
    assert "not fine-tuned from the timm: source" in str(reason("timm:vit_tiny"))
    assert "not fine-tuned from digits_cnn" in str(reason("zoo:digits_cnn"))
    timm_victim = ModelConfig(name="other", source="timm:resnet18", fingerprint="r")
    assert reason("timm:vit_tiny", timm_victim) is None  # lineage unknown: taken on trust


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


def changed_squares(adv: torch.Tensor, x: torch.Tensor, size: int) -> list[tuple[int, int]]:
    """Top-left corner of the one size x size square each image changed in (asserted)."""
    corners = []
    for changed in ((adv - x).abs().sum(1) > 0):
        rows, cols = torch.nonzero(changed, as_tuple=True)
        assert len(rows), "the patch changed nothing"
        r, c = int(rows.min()), int(cols.min())
        assert rows.max() - r < size and cols.max() - c < size
        corners.append((r, c))
    return corners


def test_pixel_grid_patch_runs_on_a_cnn() -> None:
    model = ZOO.get("digits_cnn").build_untrained().eval()  # random weights: structure only
    x = torch.rand(4, 3, 32, 32)
    y = model(x).argmax(1)
    token = patch_attack(patch_size=8)
    reason = token.unsupported(model)
    assert reason is not None and "no patch tokens" in reason and "grid: pixel" in reason
    with pytest.raises(UnsupportedModel, match="grid: pixel"):
        token.positions_grid(model, x)
    attack = patch_attack(patch_size=8, grid="pixel", steps=3)
    assert attack.unsupported(model) is None
    adv, stats = attack.perturb_with_stats(model, x, y, seed=0)
    assert adv.shape == x.shape and float(adv.min()) >= 0 and float(adv.max()) <= 1
    assert all(r % 8 == 0 and c % 8 == 0 for r, c in changed_squares(adv, x, 8))
    assert stats["attack_success_rate"][1] == 4 * 16  # every (image, position) pair


def test_pixel_grid_is_the_token_grid_of_a_vit(digits_model, digits_batch) -> None:
    x, y = digits_batch
    token, pixel = patch_attack(patch_size=8), patch_attack(patch_size=8, grid="pixel")
    assert pixel.positions_grid(digits_model, x) == token.positions_grid(digits_model, x)
    assert len(token.positions_grid(digits_model, x)) == 16
    for size in (16, 8):
        adv_token = patch_attack(patch_size=size).perturb(digits_model, x[:6], y[:6], seed=1)
        adv_pixel = patch_attack(patch_size=size, grid="pixel").perturb(digits_model, x[:6],
                                                                        y[:6], seed=1)
        assert torch.equal(adv_token, adv_pixel)


def test_pixel_grid_takes_patches_finer_than_the_tokens(digits_model, digits_batch) -> None:
    x, y = digits_batch
    attack = patch_attack(patch_size=4, grid="pixel", steps=2)
    assert len(attack.positions_grid(digits_model, x)) == 64
    adv = attack.perturb(digits_model, x[:2], y[:2], seed=0)
    assert all(r % 4 == 0 and c % 4 == 0 for r, c in changed_squares(adv, x[:2], 4))


def test_patch_grid_default_leaves_stored_params_and_cell_keys_unchanged(tmp_path: Path) -> None:
    from robustbench_vit.scenarios.attack import AttackScenario

    base = {"name": "patch", "patch_size": 8, "steps": 10}
    plain = AttackScenario.from_params(base).to_params()
    assert "grid" not in plain
    assert AttackScenario.from_params({**base, "grid": "token"}).to_params() == plain
    assert AttackScenario.from_params({**base, "grid": "pixel"}).to_params()["grid"] == "pixel"
    assert AttackScenario.from_params(plain).attack.grid == "token"
    # the keys of the quickstart's patch and DTA cells before `grid` and `surrogate` existed
    suite = load_suite(Path(__file__).resolve().parents[1] / "suites" / "quickstart.yaml")
    keys = {(c.model.name, c.scenario_label, c.scenario_params.get("content")): c.key
            for c in suite.cells("cpu") if c.defense == "none"}
    assert keys[("vit", "attack:patch", "adversarial")] == "bb628356ee0b0c4a13a163c9c51143d6"
    assert keys[("vit", "attack:patch", "corruption:gaussian_noise")] == \
        "d863084bd2cb74b1304c9a75624f5b24"
    assert keys[("vit", "transfer:dta", None)] == "863ba33ea867638fd371ce18233757ab"
    assert keys[("vit_parity_lora", "transfer:dta", None)] == "36c04a3e6716f7f0222cc201b9570c3e"


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
