"""Model sources (timm:, file:, zoo:), the Normalize ∘ backbone wrapper, and offline behaviour."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import timm.data
import torch
from torch import nn

from robustbench_vit.core.cells import ModelConfig
from robustbench_vit.core.errors import ModelLoadError
from robustbench_vit.core.registry import ZOO
from robustbench_vit.data.datasets import Digits
from robustbench_vit.models import sources as models
from robustbench_vit.models import zoo
from robustbench_vit.models.sources import (
    NormalizedModel,
    build_model,
    create_timm_backbone,
    hub_reachable,
    load_state_dict,
    model_problems,
)
from robustbench_vit.models.training import accuracy
from robustbench_vit.models.zoo import Recipe, checkpoint_path, ensure_trained, load_metadata

ARCH = "vit_tiny_patch16_224"
TINY = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
        "num_classes": 10}


def tiny_backbone(arch: str = ARCH, seed: int = 0, **changes: int) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(arch, **{**TINY, **changes}).eval()


def file_config(path: Path, **changes: object) -> ModelConfig:
    return ModelConfig(name="m", source=f"file:{path}", arch=ARCH, kwargs={**TINY, **changes})


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


# --- Normalize ∘ backbone ------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["vit_tiny_patch16_224", "deit_tiny_patch16_224"])
def test_wrapper_normalizes_with_the_timm_data_config(arch: str, images: torch.Tensor) -> None:
    backbone = tiny_backbone(arch)
    config = timm.data.resolve_model_data_config(backbone)
    model = NormalizedModel(backbone).eval()
    mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = backbone((images - mean) / std)
        assert torch.allclose(model(images), expected, atol=1e-6)
        assert not torch.allclose(model(images), backbone(images), atol=1e-3)
    assert tuple(model.data_config["mean"]) == tuple(config["mean"])
    assert tuple(model.data_config["std"]) == tuple(config["std"])


def test_wrapper_data_config_has_the_built_input_size() -> None:
    # timm reports the pretrained default (3, 224, 224) for a ViT built with img_size=32
    model = NormalizedModel(tiny_backbone())
    assert model.data_config["input_size"] == (3, 32, 32)
    assert NormalizedModel(tiny_backbone(), {"mean": (0,) * 3, "std": (1,) * 3}).data_config == {
        "mean": (0,) * 3, "std": (1,) * 3}


def test_wrapper_lets_gradients_reach_the_pixels(images: torch.Tensor) -> None:
    model = NormalizedModel(tiny_backbone())
    x = images.clone().requires_grad_(True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# --- file: sources -------------------------------------------------------------------------------

def save_checkpoint(path: Path, state: object) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))  # type: ignore[arg-type]
    else:
        torch.save(state, path)
    return path


def _variants(sd: dict[str, torch.Tensor]) -> dict[str, object]:
    return {
        "model.safetensors": sd,
        "plain.pt": sd,
        "nested.pth": {"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3},
        "model_key.pt": {"model": sd, "optimizer": {"lr": 0.1}},
    }


@pytest.mark.parametrize("name", list(_variants({})))
def test_file_source_loads_checkpoints(name: str, tmp_path: Path, images: torch.Tensor) -> None:
    reference = tiny_backbone(seed=1)
    sd = reference.state_dict()
    path = save_checkpoint(tmp_path / name, _variants(sd)[name])
    model = build_model(file_config(path))
    assert isinstance(model, NormalizedModel) and not model.training
    with torch.no_grad():
        assert torch.equal(model(images), NormalizedModel(reference)(images))


def test_module_prefix_is_stripped(tmp_path: Path) -> None:
    sd = {"module.a": torch.ones(2), "b": torch.zeros(1)}
    state = load_state_dict(save_checkpoint(tmp_path / "ckpt.pt", sd))
    assert set(state) == {"a", "b"}


class _NotWeights:  # a pickled object that weights_only=True must refuse
    pass


def test_torch_checkpoints_load_with_weights_only(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "unsafe.pt",
                           {"state_dict": tiny_backbone().state_dict(), "extra": _NotWeights()})
    with pytest.raises(ModelLoadError, match="not a readable checkpoint"):
        load_state_dict(path)


def test_checkpoint_that_does_not_fit_the_arch(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "wide.safetensors", tiny_backbone(embed_dim=48).state_dict())
    with pytest.raises(ModelLoadError) as info:
        build_model(file_config(path))
    message = str(info.value)
    assert str(path) in message and f"weights do not fit arch {ARCH!r}" in message
    assert "size mismatch for" in message  # the first actual problem, not just "Error(s) in ..."


def test_checkpoint_with_foreign_keys(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "other.pt", {"fc.weight": torch.zeros(2, 2)})
    with pytest.raises(ModelLoadError, match=r"weights do not fit arch .*Missing key"):
        build_model(file_config(path))


def test_not_a_state_dict(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "list.pt", [torch.zeros(1)])
    with pytest.raises(ModelLoadError, match="expected a state dict, got list"):
        load_state_dict(path)


def test_missing_checkpoint_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ModelLoadError, match="checkpoint not found: .*nope.safetensors"):
        build_model(file_config(missing))
    problems = dict(model_problems(ModelConfig(name="m", source="file:nope.safetensors"), tmp_path))
    assert problems["source"] == f"checkpoint not found: {missing}"
    assert "needs `arch:`" in problems["arch"]


# --- timm: sources -------------------------------------------------------------------------------

def test_unknown_timm_arch_suggests_a_name() -> None:
    with pytest.raises(ModelLoadError, match="unknown timm architecture 'vit_tiny_patch16_22'; "
                                             "did you mean vit_tiny_patch16_224"):
        create_timm_backbone("vit_tiny_patch16_22", {})
    problems = model_problems(ModelConfig(name="m", source="timm:vit_tiny_patch16_22"), Path("."))
    assert problems and "did you mean vit_tiny_patch16_224" in problems[0][1]
    assert model_problems(ModelConfig(name="m", source="hub:x"), Path(".")) == [
        ("source", "unknown source prefix 'hub' (use zoo:, timm: or file:)")]


def test_timm_source_is_reproducible(images: torch.Tensor) -> None:
    cfg = ModelConfig(name="m", source=f"timm:{ARCH}", kwargs=TINY)
    with torch.no_grad():
        assert torch.equal(build_model(cfg)(images), build_model(cfg)(images))


@pytest.fixture()
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _assert_fast_offline_failure(max_seconds: float = 30.0) -> None:
    from huggingface_hub import constants

    offline_before = constants.HF_HUB_OFFLINE
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as info:
        create_timm_backbone(ARCH, {**TINY, "depth": 1}, pretrained=True)
    seconds = time.perf_counter() - start
    message = str(info.value)
    assert message.startswith(f"timm:{ARCH}: pretrained weights could not be loaded")
    assert "Offline?" in message and "file: source" in message
    assert "\n" not in message  # one readable line, no traceback
    assert seconds < max_seconds, f"offline failure took {seconds:.1f}s"
    assert constants.HF_HUB_OFFLINE == offline_before  # offline mode is restored


def test_pretrained_without_hub_fails_fast(empty_hf_cache: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: False)
    _assert_fast_offline_failure()


def test_pretrained_offline_for_real(empty_hf_cache: Path) -> None:
    """The real probe on this machine: without network the failure takes seconds, not a minute."""
    if hub_reachable(timeout=2.0):
        pytest.skip("the Hugging Face Hub is reachable here")
    _assert_fast_offline_failure()


def test_hf_hub_offline_means_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr("socket.create_connection", _no_network)
    assert hub_reachable() is False


def _no_network(*args: object, **kwargs: object) -> None:
    raise AssertionError("hub_reachable must not touch the network in offline mode")


def test_pretrained_offline_loads_from_the_hf_cache(empty_hf_cache: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file

    reference = timm.create_model("test_vit")
    commit = "0" * 40
    repo = empty_hf_cache / "models--timm--test_vit.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(reference.state_dict(), str(repo / "snapshots" / commit / "model.safetensors"))
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: False)
    loaded = create_timm_backbone("test_vit", {}, pretrained=True)
    for (name, a), b in zip(reference.state_dict().items(), loaded.state_dict().values(),
                            strict=False):
        assert torch.equal(a, b), name


# --- zoo ------------------------------------------------------------------------------------------

TINY_RECIPE = Recipe(
    description="test recipe", dataset="digits", data={"image_size": 16}, arch=ARCH,
    arch_kwargs={"img_size": 16, "patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2,
                 "num_classes": 10},
    epochs=1, batch_size=256, lr=1e-3,
)


@pytest.fixture()
def tiny_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("RBV_CACHE", str(tmp_path / "cache"))
    ZOO.register("tiny_test_recipe", TINY_RECIPE)
    yield "tiny_test_recipe"
    ZOO.unregister("tiny_test_recipe")


def test_zoo_trains_once_then_reuses_the_checkpoint(tiny_recipe: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_metadata(tiny_recipe) is None
    path = ensure_trained(tiny_recipe)
    assert path == checkpoint_path(tiny_recipe, TINY_RECIPE)
    assert path.is_relative_to(tmp_path / "cache" / "zoo") and path.is_file()
    assert path.name == f"{tiny_recipe}-{TINY_RECIPE.recipe_hash()}.safetensors"
    meta = load_metadata(tiny_recipe)
    assert meta is not None
    assert json.loads(path.with_suffix(".json").read_text()) == meta
    assert (meta["recipe"], meta["hash"]) == (tiny_recipe, TINY_RECIPE.recipe_hash())
    assert meta["settings"]["epochs"] == 1 and 0 <= meta["test_accuracy"] <= 1

    mtime = path.stat().st_mtime_ns
    monkeypatch.setattr(zoo, "train_classifier", _must_not_train)
    assert ensure_trained(tiny_recipe) == path
    assert path.stat().st_mtime_ns == mtime

    model = build_model(ModelConfig(name="t", source=f"zoo:{tiny_recipe}"))
    test_set = Digits(split="test", image_size=16).load()
    assert accuracy(model, test_set, torch.device("cpu")) == pytest.approx(meta["test_accuracy"])


def _must_not_train(*args: object, **kwargs: object) -> float:
    raise AssertionError("a cached recipe was trained again")


def test_recipe_hash_follows_the_settings(tiny_recipe: str) -> None:
    changed = dataclasses.replace(TINY_RECIPE, epochs=2)
    assert changed.recipe_hash() != TINY_RECIPE.recipe_hash()
    assert checkpoint_path(tiny_recipe, changed) != checkpoint_path(tiny_recipe, TINY_RECIPE)
    for other in (dataclasses.replace(TINY_RECIPE, lr=2e-3),
                  dataclasses.replace(TINY_RECIPE, arch_kwargs={**TINY_RECIPE.arch_kwargs,
                                                                "depth": 2}),
                  dataclasses.replace(TINY_RECIPE, data={"image_size": 24})):
        assert other.recipe_hash() != TINY_RECIPE.recipe_hash()
    # the description and the accuracy target do not change the weights
    cosmetic = dataclasses.replace(TINY_RECIPE, description="renamed", min_accuracy=0.5)
    assert cosmetic.recipe_hash() == TINY_RECIPE.recipe_hash()


def test_unknown_zoo_recipe_suggests_a_name() -> None:
    problems = model_problems(ModelConfig(name="m", source="zoo:digits_vt"), Path("."))
    assert len(problems) == 1 and "did you mean 'digits_vit'" in problems[0][1]


def test_digits_vit_reaches_its_target(digits_model: nn.Module) -> None:
    test_set = Digits(split="test", image_size=32).load()
    acc = accuracy(digits_model, test_set, torch.device("cpu"))
    assert acc >= 0.95
    assert ZOO.get("digits_vit").min_accuracy == 0.95
    meta = load_metadata("digits_vit")
    assert meta is not None and meta["test_accuracy"] == pytest.approx(acc)
    assert digits_model.data_config["input_size"] == (3, 32, 32)


def test_train_split_enters_the_recipe_hash_only_when_set() -> None:
    attacker = dataclasses.replace(TINY_RECIPE, train_split="attacker")
    assert attacker.recipe_hash() != TINY_RECIPE.recipe_hash()
    # a shipped checkpoint's name holds the hash of its recipe as it was published
    for shipped in (Path(zoo.__file__).parent / "reference").glob("*.safetensors"):
        name, digest = shipped.stem.rsplit("-", 1)
        assert ZOO.get(name).recipe_hash() == digest, name


# --- the CNN control ----------------------------------------------------------------------------


def test_digits_cnn_is_a_resnet_that_keeps_spatial_maps_at_32px() -> None:
    from robustbench_vit.models.adapters import adapter_for

    recipe = ZOO.get("digits_cnn")
    model = recipe.build_untrained().eval()
    assert type(adapter_for(model)[0]).__name__ == "ResnetAdapter"
    x = torch.rand(2, 3, 32, 32)
    assert model(x).shape == (2, 10)
    backbone = model.backbone
    maps = backbone.forward_intermediates(x, intermediates_only=True)
    assert tuple(maps[1].shape[-2:]) == (8, 8)  # after the stem: the digits' native 8x8
    assert recipe.min_accuracy >= 0.95 and recipe.base is None
    assert sum(p.numel() for p in model.parameters()) < 2_000_000


@pytest.mark.slow
def test_digits_cnn_trains_to_its_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RBV_CACHE", str(tmp_path))
    model = zoo.load_zoo_model("digits_cnn")
    acc = accuracy(model, Digits(split="test", image_size=32).load(), torch.device("cpu"))
    assert acc >= ZOO.get("digits_cnn").min_accuracy
    record = load_metadata("digits_cnn")
    assert record is not None and record["test_accuracy"] == pytest.approx(acc)


# --- shipped reference checkpoints -------------------------------------------------------------


def test_digits_vit_installs_the_shipped_reference_without_training(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every machine evaluates the same digits_vit: the cache gets the shipped bytes."""
    monkeypatch.setenv("RBV_CACHE", str(tmp_path))
    monkeypatch.setattr(zoo, "train_classifier", lambda *a, **k: pytest.fail("trained"))
    recipe = ZOO.get("digits_vit")
    reference = zoo.reference_checkpoint("digits_vit", recipe)
    assert reference is not None, "digits_vit ships a reference checkpoint"
    path = zoo.ensure_trained("digits_vit")
    assert path.read_bytes() == reference.read_bytes()
    record = zoo.load_metadata("digits_vit")
    assert record["reference"] is True and record["hash"] == recipe.recipe_hash()
    assert record["test_accuracy"] >= recipe.min_accuracy


def test_a_tampered_reference_is_not_trusted(tmp_path: Path) -> None:
    reference = zoo.reference_checkpoint("digits_vit", ZOO.get("digits_vit"))
    assert reference is not None
    copy = tmp_path / "ref" / reference.name
    copy.parent.mkdir()
    copy.write_bytes(reference.read_bytes()[:-1] + b"\x00")
    copy.with_suffix(".json").write_text(reference.with_suffix(".json").read_text())
    target = tmp_path / "cache" / reference.name
    assert zoo.install_reference(copy, target) is False
    assert not target.exists() and not target.with_suffix(".json").exists()


def test_a_recipe_without_a_reference_is_trained() -> None:
    assert zoo.reference_checkpoint("digits_vit_student", ZOO.get("digits_vit_student")) is None
