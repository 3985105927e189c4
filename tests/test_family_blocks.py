"""Block-level defenses and scenarios on every model family the adapters know (tiny timm models):
LayerShuffle, layer_order, the patch attack's token grid, int8 quantization, block features."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from families import EXPECTED_FAMILY, FAMILIES, build, images
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.hooks import RemovableHandle

from defenses.layer_shuffle import LayerShuffle, ShuffledBlocks, ShuffledModuleList
from robustbench_vit.api import UnsupportedModel
from robustbench_vit.core.plugins import load_plugins
from robustbench_vit.core.registry import ATTACKS
from robustbench_vit.models.adapters import Stage, adapter_for
from robustbench_vit.models.compression import FakeQuantLinear, compress
from robustbench_vit.models.eot import EOTModel
from robustbench_vit.models.finetune import LoRALinear, finalize, prepare_last_blocks, prepare_lora
from robustbench_vit.models.sources import NormalizedModel
from robustbench_vit.models.vit import capture_block_outputs, num_blocks, patch_size
from robustbench_vit.scenarios.attack import AttackScenario
from robustbench_vit.scenarios.base import CellContext
from robustbench_vit.scenarios.layer_order.scenario import LayerOrderScenario

load_plugins()

NO_SHUFFLE = {"convit": "inserts the CLS token", "mvitv2": "not interchangeable",
              "resnet": "no sequence of interchangeable encoder blocks",
              "convnext": "no sequence of interchangeable encoder blocks"}
SHUFFLED = [f for f in FAMILIES if f not in NO_SHUFFLE]
ORDER_SKIPPED = {"convit": "inserts the CLS token", "swin": "hierarchical",
                 "swinv2": "hierarchical", "pit": "hierarchical", "twins": "hierarchical",
                 "levit": "hierarchical", "mvitv2": "not interchangeable",
                 "resnet": "no sequence of interchangeable encoder blocks",
                 "convnext": "no sequence of interchangeable encoder blocks"}
ORDER_RUNS = ["vit", "vit_reg", "deit", "beit", "eva02", "cait", "xcit"]
FORWARDS = 10


def context(model: nn.Module, family: str, n: int = 8) -> CellContext:
    """A CPU cell context over `n` random images of the family's size with random labels."""
    x = images(family, n)
    y = torch.randint(0, 10, (n,), generator=torch.Generator().manual_seed(2))
    return CellContext(model=model, loader=DataLoader(TensorDataset(x, y), batch_size=4),
                       device=torch.device("cpu"), seed=0, num_classes=10)


def record_order(stages: list[Stage]) -> tuple[list[list[int]], list[RemovableHandle]]:
    """(per-stage list of executed block indices, hook handles): forward pre-hooks on every block
    of every stage, found by index (iterating a shuffled container in training mode permutes)."""
    executed: list[list[int]] = [[] for _ in stages]
    handles = []
    for s, stage in enumerate(stages):
        for i in range(len(stage.blocks)):
            def hook(_m: nn.Module, _a: tuple, s: int = s, i: int = i) -> None:
                executed[s].append(i)
            handles.append(stage.blocks[i].register_forward_pre_hook(hook))
    return executed, handles


def run_orders(model: nn.Module, stages: list[Stage], x: torch.Tensor,
               forwards: int) -> list[list[list[int]]]:
    """For each forward, each stage's executed block indices."""
    executed, handles = record_order(stages)
    per_forward = []
    try:
        with torch.no_grad():
            for _ in range(forwards):
                for e in executed:
                    e.clear()
                model(x)
                per_forward.append([list(e) for e in executed])
    finally:
        for h in handles:
            h.remove()
    return per_forward


# --- LayerShuffle --------------------------------------------------------------------------------

@pytest.mark.parametrize("family", SHUFFLED)
def test_layer_shuffle_permutes_every_stage_it_claims_to(family: str) -> None:
    model = build(family)
    keys = list(model.state_dict())
    adapter, net = adapter_for(model)
    claimed = [s.path for s in adapter.shuffle_stages(net)]
    LayerShuffle().apply(model)
    assert list(model.state_dict()) == keys
    stages = adapter.shuffle_stages(net)
    assert [s.path for s in stages] == claimed and stages
    for stage in stages:
        assert isinstance(stage.blocks, ShuffledBlocks | ShuffledModuleList), stage.path
    x = images(family, 2)
    torch.manual_seed(0)
    model.train()
    trained = run_orders(model, stages, x, FORWARDS)
    for s, stage in enumerate(stages):
        depth = len(stage.blocks)
        orders = [forward[s] for forward in trained]
        assert all(sorted(o) == list(range(depth)) for o in orders), (stage.path, orders)
        assert any(o != list(range(depth)) for o in orders), (stage.path, orders)
    model.eval()
    for forward in run_orders(model, stages, x, 2):
        assert forward == [list(range(len(s.blocks))) for s in stages]


@pytest.mark.parametrize("family", SHUFFLED)
def test_layer_shuffle_eval_model_is_the_base_model(family: str) -> None:
    base = build(family)
    model = LayerShuffle().apply(copy.deepcopy(base)).eval()
    x = images(family, 2)
    with torch.no_grad():
        assert torch.equal(model(x), base(x))


@pytest.mark.parametrize("family", sorted(NO_SHUFFLE))
def test_layer_shuffle_is_unsupported_with_the_adapters_reason(family: str) -> None:
    model = build(family)
    keys = list(model.state_dict())
    with pytest.raises(UnsupportedModel, match=NO_SHUFFLE[family]) as info:
        LayerShuffle().apply(model)
    assert str(info.value).startswith(f"{EXPECTED_FAMILY[family]}:")
    assert list(model.state_dict()) == keys


@pytest.mark.parametrize("family", ["beit", "swin", "cait"])
def test_slot_embedding_outside_a_plain_vit_is_unsupported_and_changes_nothing(
        family: str) -> None:
    model = build(family)
    adapter, net = adapter_for(model)
    containers = [type(s.blocks) for s in adapter.shuffle_stages(net)]
    with pytest.raises(UnsupportedModel, match="slot_embedding needs a timm VisionTransformer"):
        LayerShuffle(slot_embedding=True).apply(model)
    assert [type(s.blocks) for s in adapter.shuffle_stages(net)] == containers


@pytest.mark.parametrize("family", ["vit", "vit_reg", "deit"])
def test_slot_embedding_on_vision_transformers(family: str) -> None:
    model = LayerShuffle(slot_embedding=True).apply(build(family)).eval()
    assert model.backbone.slot_embed.embedding.shape[0] == 3
    with torch.no_grad():
        assert torch.isfinite(model(images(family, 2))).all()


# --- layer_order ---------------------------------------------------------------------------------

@pytest.mark.parametrize("family", sorted(ORDER_SKIPPED))
def test_layer_order_is_skipped_with_a_true_reason(family: str) -> None:
    model = build(family)
    with pytest.raises(UnsupportedModel, match=ORDER_SKIPPED[family]) as info:
        LayerOrderScenario(permutations=2, prune=[1], prune_draws=1).run(context(model, family))
    assert str(info.value).startswith(f"{EXPECTED_FAMILY[family]}:")


@pytest.mark.parametrize("family", ORDER_RUNS)
def test_layer_order_runs_and_restores_the_model(family: str) -> None:
    model = build(family)
    adapter, net = adapter_for(model)
    stage = adapter.order_stage(net)
    container, modules = stage.blocks, [stage.blocks[i] for i in range(len(stage.blocks))]
    keys, x = list(model.state_dict()), images(family, 4)
    with torch.no_grad():
        before = model(x)
    ctx = context(model, family)
    depth = len(modules)
    rows = LayerOrderScenario(permutations=2, prune=[1], prune_draws=1).run(ctx)
    assert [m.metric for m in rows] == ["accuracy", "order_accuracy", "order_accuracy",
                                        "pruned_accuracy"]
    assert all(m.n == 8 and 0 <= m.value <= 1 for m in rows)
    sequential, reversed_order = tuple(range(depth)), tuple(reversed(range(depth)))
    y = model(x).argmax(1)
    with torch.no_grad():
        same = LayerOrderScenario.count_correct(ctx, stage, sequential, sequential, x, y)
        permuted = LayerOrderScenario.count_correct(ctx, stage, reversed_order, sequential, x, y)
    assert same == len(y) and 0 <= permuted <= len(y)
    assert stage.blocks is container and [stage.blocks[i] for i in range(depth)] == modules
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        assert torch.equal(model(x), before)


# --- token grid step and the patch attack --------------------------------------------------------

def pit_overlapping() -> nn.Module:
    """A PiT whose patch convolution overlaps (kernel 8, stride 4): tokens are 4 px apart."""
    torch.manual_seed(0)
    net = timm.create_model("pit_ti_224", img_size=32, patch_size=8, stride=4, base_dims=[16, 16],
                            depth=[2, 2], heads=[1, 2], num_classes=10)
    return NormalizedModel(net).eval()


def test_patch_size_is_the_pixel_step_between_tokens() -> None:
    assert patch_size(build("vit")) == (8, 8)
    assert patch_size(build("swin")) == (4, 4)
    pit = build("pit")
    assert patch_size(pit) == tuple(pit.backbone.patch_embed.conv.stride) == (4, 4)
    overlapping = pit_overlapping()
    assert overlapping.backbone.patch_embed.conv.kernel_size == (8, 8)
    assert patch_size(overlapping) == (4, 4)
    assert patch_size(EOTModel(build("swin"), 2)) == (4, 4)  # through an EOT wrapper
    for family in ("resnet", "convnext"):
        with pytest.raises(UnsupportedModel, match="no patch tokens"):
            patch_size(build(family))


@pytest.mark.parametrize("family", ["swin", "pit", "levit"])
def test_patch_attack_grid_follows_the_token_step(family: str) -> None:
    model = build(family)
    x = images(family, 2)
    step = patch_size(model)[0]
    attack = ATTACKS.get("patch")(patch_size=2 * step, steps=2)
    grid = attack.positions_grid(model, x)
    side = x.shape[-1] // (2 * step)
    assert len(grid) == side * side and all(r % step == 0 and c % step == 0 for r, c in grid)
    y = model(x).argmax(1)
    adv, stats = attack.perturb_with_stats(model, x, y, seed=0)
    assert adv.shape == x.shape and stats["attack_success_rate"][1] == 2 * len(grid)
    with pytest.raises(ValueError, match="token patch size"):
        ATTACKS.get("patch")(patch_size=step + 1).positions_grid(model, x)


def test_patch_attack_on_a_cnn_is_unsupported() -> None:
    model = build("resnet")
    with pytest.raises(UnsupportedModel, match="no patch tokens"):
        ATTACKS.get("patch")(patch_size=8).positions_grid(model, images("resnet", 1))


@pytest.mark.parametrize("name", ["patch", "fgsm"])
def test_attack_without_a_correctly_classified_image_reports_no_rate(name: str) -> None:
    # robust accuracy is exactly 0 of n; a success rate over 0 attacked images is not a number
    model = build("swin")
    x = images("swin", 4)
    with torch.no_grad():
        wrong = (model(x).argmax(1) + 1) % 10
    ctx = CellContext(model=model, loader=DataLoader(TensorDataset(x, wrong), batch_size=2),
                      device=torch.device("cpu"), seed=0, num_classes=10)
    params = {"name": name, "steps": 1} if name == "patch" else {"name": name}
    rows = AttackScenario.from_params(params).run(ctx)
    assert [(r.metric, r.value, r.n) for r in rows] == [("robust_accuracy", 0.0, 4)]


# --- int8 ----------------------------------------------------------------------------------------

KEPT_FLOAT = {"beit": "attn.qkv", "eva02": "attn.qkv", "swinv2": "attn.qkv", "convit": "attn.qk"}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_int8_works_on_every_family(family: str) -> None:
    model = build(family)
    x = images(family, 4)
    compressed = compress(model, "int8")
    with torch.no_grad():
        reference = model(x)
        target = compressed.target(x)
        surrogate = compressed.surrogate(x)
    scale = float(reference.abs().max())
    assert float((target - reference).abs().max()) < 0.3 * scale
    assert float((surrogate - reference).abs().max()) < 0.3 * scale
    quantized = {n for n, m in compressed.target.named_modules()
                 if type(m).__name__ == "Linear" and type(m).__module__.startswith("torch.ao")}
    faked = {n for n, m in compressed.surrogate.named_modules() if isinstance(m, FakeQuantLinear)}
    assert quantized and quantized == faked  # the surrogate mirrors exactly the quantized layers
    floats = {n for n, m in compressed.target.named_modules() if type(m) is nn.Linear}
    expected = KEPT_FLOAT.get(family)
    assert all(n.endswith(expected) for n in floats) if expected else not floats
    if expected:
        assert floats


def test_int8_surrogate_passes_gradients_through_kept_float_layers() -> None:
    compressed = compress(build("beit"), "int8")
    x = images("beit", 2).requires_grad_(True)
    compressed.surrogate(x).logsumexp(1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# --- block features and fine-tuning --------------------------------------------------------------

@pytest.mark.parametrize("family", ["swin", "cait", "mvitv2", "twins"])
def test_block_features_cover_every_stage(family: str) -> None:
    model = build(family)
    adapter, net = adapter_for(model)
    depth = sum(len(s.blocks) for s in adapter.stages(net))
    assert num_blocks(model) == depth
    with capture_block_outputs(model, [0, -1]) as feats:
        with torch.no_grad():
            model(images(family, 2))
    assert sorted(feats) == [0, depth - 1]
    assert all(isinstance(f, torch.Tensor) and len(f) == 2 for f in feats.values())


def test_last_blocks_fine_tuning_trains_the_last_stages_last_block() -> None:
    model = build("swin")
    prepare_last_blocks(model, last_blocks=1)
    trainable = {n.split(".blocks.")[0] + ".blocks." + n.split(".blocks.")[1].split(".")[0]
                 for n, p in model.named_parameters() if p.requires_grad and ".blocks." in n}
    assert trainable == {"backbone.layers.1.blocks.1"}
    for family in ("resnet", "convnext"):
        with pytest.raises(UnsupportedModel, match="no encoder blocks"):
            prepare_last_blocks(build(family), last_blocks=1)


@pytest.mark.parametrize("family", ["beit", "swinv2"])
def test_lora_adapts_linears_whose_weight_the_attention_reads_directly(family: str) -> None:
    base = build(family)
    model = copy.deepcopy(base)
    prepare_lora(model, lora_rank=2)
    x = images(family, 2)
    with torch.no_grad():
        assert torch.equal(model(x), base(x))  # B = 0: the adapted model starts as the base
    model(x).logsumexp(1).sum().backward()
    qkv = model.backbone.get_submodule(
        "blocks.0.attn.qkv" if family == "beit" else "layers.0.blocks.0.attn.qkv")
    assert isinstance(qkv, LoRALinear) and qkv.lora_b.grad is not None
    assert qkv.lora_b.grad.abs().sum() > 0
    finalize(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
