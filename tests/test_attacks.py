"""Attack contracts for every registered attack, sanity checks of the attack scenario, AutoAttack.

The contract tests are parametrized over `ATTACKS` (after `load_plugins()`), so a new attack file is
tested without edits here. Each attack is built from its dataclass defaults with cheap overrides
applied where the field exists (`CHEAP_OVERRIDES`) and eps set per norm (`EPS`).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import nn

from robustbench_vit.api import Attack
from robustbench_vit.config.load import load_suite
from robustbench_vit.core.cells import Cell
from robustbench_vit.core.params import validate_params
from robustbench_vit.core.plugins import load_plugins
from robustbench_vit.core.registry import ATTACKS
from robustbench_vit.execution.evaluate import CellResult, evaluate_cell
from robustbench_vit.scenarios.attack import AttackContractError, attack_batch

load_plugins()

SEED = 1234
N_IMAGES = 16
TOLERANCE = 1e-5
CHEAP_OVERRIDES: dict[str, Any] = {"steps": 5, "n_queries": 100, "n_restarts": 1}
EPS: dict[str, float] = {"Linf": 8 / 255, "L2": 1.0}
SLOW_ATTACKS = frozenset({"autoattack"})
"""Attacks with no cheap knob: their full-strength contract cases run with `-m slow` only."""

Perturbed = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(images given, the same tensor after perturb returned, adversarial images)."""


# --------------------------------------------------------------------------- building attacks


def supported_norms(cls: type) -> list[str | None]:
    """The values of an attack's `norm` field (a Literal), or [None] when it has no such field."""
    if "norm" not in {f.name for f in dataclasses.fields(cls)}:
        return [None]
    return list(typing.get_args(typing.get_type_hints(cls)["norm"]))


def make_attack(name: str, norm: str | None = None, eps: float | None = None) -> Attack:
    """The registered attack `name` with cheap overrides, `norm` and eps (EPS[norm] by default)."""
    cls = ATTACKS.get(name)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    params = {k: v for k, v in CHEAP_OVERRIDES.items() if k in fields}
    if norm is not None:
        params["norm"] = norm
    if "eps" in fields:
        params["eps"] = EPS[norm or "Linf"] if eps is None else eps
    return validate_params(cls, params)


def contract_cases() -> list[Any]:
    """One pytest case per (registered attack, supported norm); slow attacks marked slow."""
    cases = []
    for name in ATTACKS.names():
        marks = [pytest.mark.slow] if name in SLOW_ATTACKS else []
        for norm in supported_norms(ATTACKS.get(name)):
            cases.append(pytest.param(name, norm, id=f"{name}-{norm or 'default'}", marks=marks))
    return cases


def perturbation_size(norm: str, delta: torch.Tensor) -> torch.Tensor:
    """Per-image L∞ or L2 size of `delta`."""
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "Linf" else flat.norm(dim=1)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def correct_images(digits_model: nn.Module, digits_batch: tuple[torch.Tensor, torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """N_IMAGES digits images the model gets right (what attack_batch hands to perturb)."""
    x, y = digits_batch
    with torch.no_grad():
        keep = digits_model(x).argmax(1) == y
    return x[keep][:N_IMAGES].clone(), y[keep][:N_IMAGES].clone()


@pytest.fixture(scope="module")
def perturbed(digits_model: nn.Module, correct_images: tuple[torch.Tensor, torch.Tensor]
              ) -> Callable[[str, str | None], Perturbed]:
    """perturbed(name, norm): one seeded perturb run per case, shared by the output contracts."""
    runs: dict[tuple[str, str | None], Perturbed] = {}

    def run(name: str, norm: str | None) -> Perturbed:
        if (name, norm) not in runs:
            x, y = correct_images
            given = x.clone()
            x_adv = make_attack(name, norm).perturb(digits_model, given, y.clone(), seed=SEED)
            runs[name, norm] = (x, given, x_adv)
        return runs[name, norm]

    return run


# --------------------------------------------------------------------------- contracts


@pytest.mark.parametrize(("name", "norm"), contract_cases())
def test_output_has_input_shape_and_dtype(perturbed: Callable[..., Perturbed], name: str,
                                          norm: str | None) -> None:
    x, _, x_adv = perturbed(name, norm)
    assert x_adv.shape == x.shape
    assert x_adv.dtype == x.dtype
    assert x_adv.device == x.device


@pytest.mark.parametrize(("name", "norm"), contract_cases())
def test_output_in_unit_range(perturbed: Callable[..., Perturbed], name: str,
                              norm: str | None) -> None:
    _, _, x_adv = perturbed(name, norm)
    assert torch.isfinite(x_adv).all()
    assert float(x_adv.min()) >= -TOLERANCE
    assert float(x_adv.max()) <= 1 + TOLERANCE


@pytest.mark.parametrize(("name", "norm"), contract_cases())
def test_output_within_budget(perturbed: Callable[..., Perturbed], name: str,
                              norm: str | None) -> None:
    threat = make_attack(name, norm).threat_model()
    if threat is None:
        pytest.skip(f"{name} is unbounded (threat_model() is None)")
    assert threat == (norm or "Linf", EPS[norm or "Linf"]), "threat_model() misreports the budget"
    x, _, x_adv = perturbed(name, norm)
    size = perturbation_size(threat[0], x_adv - x)
    assert float(size.max()) <= threat[1] + TOLERANCE


@pytest.mark.parametrize(("name", "norm"), contract_cases())
def test_output_differs_from_input(perturbed: Callable[..., Perturbed], name: str,
                                   norm: str | None) -> None:
    """An attack with a non-zero budget perturbs something (a no-op passes every other check)."""
    x, _, x_adv = perturbed(name, norm)
    assert not torch.equal(x_adv, x)


@pytest.mark.parametrize(("name", "norm"), contract_cases())
def test_perturb_does_not_modify_its_input(perturbed: Callable[..., Perturbed], name: str,
                                           norm: str | None) -> None:
    x, given, _ = perturbed(name, norm)
    assert torch.equal(given, x)


@pytest.mark.parametrize(("name", "norm"), contract_cases())
def test_deterministic_for_a_seed(perturbed: Callable[..., Perturbed], digits_model: nn.Module,
                                  correct_images: tuple[torch.Tensor, torch.Tensor], name: str,
                                  norm: str | None) -> None:
    _, _, first = perturbed(name, norm)
    x, y = correct_images
    torch.manual_seed(999)  # the global RNG state must not leak into the result
    again = make_attack(name, norm).perturb(digits_model, x.clone(), y.clone(), seed=SEED)
    assert torch.equal(again, first)


@pytest.mark.parametrize(("name", "norm"), contract_cases())
def test_robust_accuracy_never_exceeds_clean(digits_model: nn.Module,
                                             digits_batch: tuple[torch.Tensor, torch.Tensor],
                                             name: str, norm: str | None) -> None:
    x, y = (t[: 2 * N_IMAGES] for t in digits_batch)
    clean, robust, x_adv = attack_batch(digits_model, make_attack(name, norm), x, y, SEED)
    assert not (robust & ~clean).any(), "an image counted robust was misclassified when clean"
    assert int(robust.sum()) <= int(clean.sum())
    assert torch.equal(x_adv[~clean], x[~clean]), "clean-wrong images must not be attacked"


@pytest.mark.parametrize("name", ATTACKS.names())
def test_eps_zero_returns_images_unchanged(digits_model: nn.Module,
                                           correct_images: tuple[torch.Tensor, torch.Tensor],
                                           name: str) -> None:
    if "eps" not in {f.name for f in dataclasses.fields(ATTACKS.get(name))}:
        pytest.skip(f"{name} has no eps")
    attack = make_attack(name, eps=0.0)
    x, y = correct_images
    assert torch.equal(attack.perturb(digits_model, x.clone(), y, seed=SEED), x)
    clean, robust, _ = attack_batch(digits_model, attack, x, y, SEED)
    assert torch.equal(robust, clean), "eps=0 must flip nothing (attack success rate 0)"


# --------------------------------------------------------------------------- sanity via cells


def suite_cells(tmp_path: Path, scenarios: list[dict[str, Any]],
                n_examples: int = 100) -> list[Cell]:
    """Cells of a small digits suite written to tmp_path and loaded like a user's suite."""
    suite = {
        "suite": "attack_sanity", "seed": 0, "device": "cpu",
        "data": {"dataset": "digits", "split": "test", "image_size": 32,
                 "n_examples": n_examples, "batch_size": 50},
        "models": [{"name": "vit", "source": "zoo:digits_vit"}],
        "scenarios": scenarios,
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    return load_suite(path).cells()


def metric(result: CellResult, name: str) -> float:
    """The value of one measurement of an ok cell."""
    assert result.status == "ok", result.error
    return next(m.value for m in result.measurements if m.metric == name)


def test_attack_scenario_at_eps_zero_has_zero_success_rate(tmp_path: Path,
                                                           digits_model: nn.Module) -> None:
    clean_cell, attack_cell = suite_cells(tmp_path, [
        {"kind": "clean"}, {"kind": "attack", "name": "pgd", "eps": 0.0, "steps": 5}])
    attacked = evaluate_cell(attack_cell)
    assert metric(attacked, "attack_success_rate") == 0.0
    assert metric(attacked, "robust_accuracy") == metric(evaluate_cell(clean_cell), "accuracy")


def test_pgd_robust_accuracy_does_not_rise_with_eps(tmp_path: Path,
                                                    digits_model: nn.Module) -> None:
    sweep = ["0", "1/255", "2/255", "4/255", "8/255"]
    cells = suite_cells(tmp_path, [{"kind": "attack", "name": "pgd", "norm": "Linf", "steps": 10,
                                    "sweep": {"eps": sweep}}])
    accuracies = [metric(evaluate_cell(cell), "robust_accuracy") for cell in cells]
    by_eps = dict(zip(sweep, accuracies, strict=True))
    assert all(a >= b for a, b in zip(accuracies, accuracies[1:], strict=False)), by_eps
    assert accuracies[-1] < accuracies[0], "PGD at 8/255 changed nothing"


def test_pgd_linf_16_drives_digits_model_below_10_percent(
        digits_model: nn.Module, digits_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits_batch
    attack = validate_params(ATTACKS.get("pgd"), {"norm": "Linf", "eps": 16 / 255, "steps": 10})
    _, robust, _ = attack_batch(digits_model, attack, x, y, SEED)
    assert float(robust.float().mean()) < 0.10


def test_pgd_l2_large_eps_drives_digits_model_to_zero(
        digits_model: nn.Module, digits_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits_batch
    attack = validate_params(ATTACKS.get("pgd"), {"norm": "L2", "eps": 4.0, "steps": 10})
    _, robust, _ = attack_batch(digits_model, attack, x, y, SEED)
    assert int(robust.sum()) <= 1, f"{int(robust.sum())} of {len(y)} images survived L2 eps 4"


# --------------------------------------------------------------------------- broken attacks


@dataclass(frozen=True, kw_only=True)
class OutOfBudget(Attack):
    """Test double: moves pixels by twice its L∞ budget (stays in [0,1])."""

    eps: float = 8 / 255

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                seed: int) -> torch.Tensor:
        return (x + 2 * self.eps).clamp(0, 1)


@dataclass(frozen=True, kw_only=True)
class OutOfRange(Attack):
    """Test double: shifts every pixel down by exactly eps (inside its budget, below 0)."""

    eps: float = 8 / 255

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                seed: int) -> torch.Tensor:
        return x - self.eps


BROKEN = {"test_out_of_budget": (OutOfBudget, "budget"), "test_out_of_range": (OutOfRange, "left")}


@pytest.fixture(params=sorted(BROKEN))
def broken_attack(request: pytest.FixtureRequest) -> Iterator[str]:
    """Register one deliberately broken attack for the test, unregister it afterwards."""
    name = request.param
    assert name not in ATTACKS
    ATTACKS.register(name, BROKEN[name][0])
    try:
        yield name
    finally:
        ATTACKS.unregister(name)
    assert name not in ATTACKS


def test_budget_check_rejects_broken_attack(broken_attack: str, digits_model: nn.Module,
                                            correct_images: tuple[torch.Tensor, torch.Tensor]
                                            ) -> None:
    x, y = correct_images
    with pytest.raises(AttackContractError, match=BROKEN[broken_attack][1]):
        attack_batch(digits_model, ATTACKS.get(broken_attack)(), x, y, SEED)


def test_broken_attack_cell_is_an_error_not_a_number(broken_attack: str, tmp_path: Path,
                                                     digits_model: nn.Module) -> None:
    (cell,) = suite_cells(tmp_path, [{"kind": "attack", "name": broken_attack}], n_examples=20)
    result = evaluate_cell(cell)
    assert result.status == "error"
    assert result.measurements == []
    assert "AttackContractError" in (result.error or "")


# --------------------------------------------------------------------------- AutoAttack


def test_autoattack_builds_the_original_standard_configuration(digits_model: nn.Module) -> None:
    runner = make_attack("autoattack", "Linf").build(digits_model, torch.device("cpu"), SEED)
    assert type(runner).__module__.startswith("pyautoattack")
    assert runner.attacks_to_run == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert (runner.norm, runner.epsilon, runner.seed) == ("Linf", 8 / 255, SEED)
    assert runner.apgd.n_iter == 100
    assert runner.apgd.n_restarts == 1
    assert runner.apgd_targeted.n_iter == 100
    assert runner.apgd_targeted.n_target_classes == 9
    assert runner.fab.n_target_classes == 9
    assert runner.square.n_queries == 5000


@pytest.mark.slow
def test_autoattack_matches_the_original_run(digits_model: nn.Module,
                                             digits_batch: tuple[torch.Tensor, torch.Tensor]
                                             ) -> None:
    """Same images, seed and eps: our attack and a direct pyautoattack run agree exactly.

    At 8/255 APGD-CE already breaks most digits images; a budget where every stage runs takes
    minutes on CPU (APGD-T and FAB-T with 9 targets, Square with 5000 queries).
    """
    from pyautoattack import AutoAttack as Original

    x, y = (t[:N_IMAGES] for t in digits_batch)
    eps = 8 / 255
    ours = validate_params(ATTACKS.get("autoattack"), {"eps": eps})
    _, robust, x_ours = attack_batch(digits_model, ours, x, y, SEED)
    original = Original(digits_model, norm="Linf", eps=eps, version="standard", seed=SEED,
                        device="cpu")
    x_orig, _ = original.run_standard_evaluation(x, y, batch_size=ours.batch_size)
    with torch.no_grad():
        robust_orig = digits_model(x_orig).argmax(1) == y
    assert float(robust.float().mean()) == float(robust_orig.float().mean())
    assert torch.equal(robust, robust_orig)
    assert torch.equal(x_ours, x_orig)


@pytest.mark.parametrize("content", ["adversarial", "corruption:gaussian_noise"])
def test_patch_chunking_does_not_change_the_result(digits_model: nn.Module,
                                                   correct_images: tuple[torch.Tensor,
                                                                         torch.Tensor],
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   content: str) -> None:
    """(image, position) pairs in chunks of 5 (as at 224 px) give the one-chunk result."""
    import attacks.patch as patch_module

    x, y = correct_images[0][:6], correct_images[1][:6]
    attack = ATTACKS.get("patch")(patch_size=8, steps=5, positions="all", content=content)
    whole, whole_stats = attack.perturb_with_stats(digits_model, x, y, seed=3)
    monkeypatch.setattr(patch_module, "CHUNK_PIXELS", 5 * 32 * 32)
    chunked, chunked_stats = attack.perturb_with_stats(digits_model, x, y, seed=3)
    assert chunked_stats == whole_stats
    assert whole_stats["attack_success_rate"][1] == 6 * 16
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-6)
