"""Contract tests of every registered defense: shapes, no side effects, determinism, gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from robustbench_vit.api import DEFENSES, Defense
from robustbench_vit.core.params import validate_params
from robustbench_vit.core.plugins import load_plugins

load_plugins()
NAMES = DEFENSES.names()


def make_defense(name: str) -> Defense:
    """The defense `name` with its default settings, validated like a suite's entry."""
    return validate_params(DEFENSES.get(name), {})


def defended(name: str, model: nn.Module) -> tuple[Defense, nn.Module]:
    """(defense, its apply() on a private copy of `model`, in eval mode)."""
    defense = make_defense(name)
    out = defense.apply(copy.deepcopy(model))
    assert isinstance(out, nn.Module), f"{name}.apply returned {type(out).__name__}"
    return defense, out.eval()


def test_builtin_defenses_registered() -> None:
    assert {"none", "temperature_scaling", "tap_adl"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_docstring_describes(name: str) -> None:
    assert DEFENSES.describe(name).strip(), f"{name} needs a first docstring line"
    assert DEFENSES.get(name).stage in ("inference", "training")


@pytest.mark.parametrize("name", NAMES)
def test_apply_maps_images_to_logits(name: str, digits_model: nn.Module,
                                     digits_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x = digits_batch[0][:8]
    _, model = defended(name, digits_model)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (8, 10)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", NAMES)
def test_apply_leaves_base_model_unchanged(name: str, digits_model: nn.Module) -> None:
    before = {k: v.clone() for k, v in digits_model.state_dict().items()}
    modules_before = [type(m) for m in digits_model.modules()]
    defended(name, digits_model)
    after = digits_model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [type(m) for m in digits_model.modules()] == modules_before


@pytest.mark.parametrize("name", NAMES)
def test_eval_forward_is_deterministic(name: str, digits_model: nn.Module,
                                       digits_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    defense, model = defended(name, digits_model)
    if defense.eot_samples() > 1:
        pytest.skip(f"{name} declares itself randomized (EOT)")
    x = digits_batch[0][:8]
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_the_input(name: str, digits_model: nn.Module,
                                   digits_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    defense, model = defended(name, digits_model)
    target = defense.attack_view(model) or model
    if not type(defense).differentiable and target is model:
        pytest.skip(f"{name} is not differentiable and offers no attack_view")
    x = digits_batch[0][:4].clone().requires_grad_(True)
    nn.functional.cross_entropy(target(x), digits_batch[1][:4]).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_training_loss_contract(name: str, digits_model: nn.Module,
                                digits_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    defense = make_defense(name)
    if not defense.needs_training():
        pytest.skip(f"{name} is an inference-time defense")
    model = defense.apply(copy.deepcopy(digits_model))
    for p in model.parameters():
        p.requires_grad_(True)
    x, y = digits_batch[0][:16], digits_batch[1][:16]
    model.train()
    logits = model(x)
    loss = defense.training_loss(model, x, y, logits)
    if loss is None:
        return
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert loss.requires_grad
    (nn.functional.cross_entropy(logits, y) + loss).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
