"""Adaptive evaluation: attack-failure indicators, per-example outcomes, the worst case per image.

The masked toy defenses are written as a user would write them, as a plugin through the public
API; before the audit layer each kept ~95% robust accuracy under PGD with no flag.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from robustbench_vit.audit.indicators import (
    INDICATORS,
    BatchProbe,
    cell_counts,
    indicator_rows,
    merge_counts,
)
from robustbench_vit.audit.worst_case import WORST_CASE, blackbox_flags, worst_case_rows
from robustbench_vit.core.cells import ModelConfig
from robustbench_vit.core.metrics import paired_difference
from robustbench_vit.core.outcomes import ExampleBits
from robustbench_vit.core.params import validate_params
from robustbench_vit.core.plugins import load_plugins
from robustbench_vit.core.registry import ATTACKS, FLAGS
from robustbench_vit.scenarios.attack import AttackScenario
from robustbench_vit.scenarios.base import CellContext

load_plugins()  # the registries the tests are parametrized over

TOY_PLUGIN = '''\
"""Three "defenses" that only hide the gradient (plugins through the public API)."""
from dataclasses import dataclass

import torch
from torch import nn

from robustbench_vit.api import Defense, register_defense


class Wrapped(nn.Module):
    def __init__(self, model, fn):
        super().__init__()
        self.model, self.fn = model, fn

    def forward(self, x):
        return self.fn(self.model, x)


class RoundZeroGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x * 7) / 7

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad)


@register_defense("toy_saturate")
@dataclass(frozen=True, kw_only=True)
class Saturate(Defense):
    """Logits times 1e4: softmax saturates, cross-entropy gradients vanish."""
    factor: float = 1e4

    def apply(self, model):
        return Wrapped(model, lambda m, x: m(x) * self.factor)


@register_defense("toy_quantize")
@dataclass(frozen=True, kw_only=True)
class Quantize(Defense):
    """The input quantized to 8 levels, with a zero gradient."""

    def apply(self, model):
        return Wrapped(model, lambda m, x: m(RoundZeroGrad.apply(x)))


@register_defense("toy_noise")
@dataclass(frozen=True, kw_only=True)
class Noise(Defense):
    """Gaussian input noise at every forward; declares no EOT."""
    sigma: float = 0.3

    def apply(self, model):
        return Wrapped(model, lambda m, x: m((x + self.sigma * torch.randn_like(x)).clamp(0, 1)))
'''

SUITE = """\
suite: masked
seed: 0
data: {dataset: digits, split: test, image_size: 32, n_examples: 100, batch_size: 50}
models:
  - name: vit
    source: zoo:digits_vit
    defenses: [none, toy_saturate, toy_quantize, toy_noise]
scenarios:
  - {kind: clean}
  - {kind: attack, name: pgd, eps: 8/255, steps: 10, indicator_examples: 40}
  - {kind: attack, name: pgd, eps: 8/255, steps: 10, source: base}
  - {kind: attack, name: square, eps: 8/255, n_queries: 300}
gates:
  - {model: vit, defense: "*", scenario: "attack:pgd", metric: robust_accuracy, no_flags: true}
  - {model: vit, defense: none, scenario: clean, metric: accuracy,
     better_than: {defense: toy_noise}}
"""


@pytest.fixture(scope="module")
def masked_results(rbv_bin: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The masked suite evaluated through the real console script, with the toy plugin."""
    root = tmp_path_factory.mktemp("masked")
    site = root / "site"
    site.mkdir()
    (site / "toy_rbv_masks.py").write_text(TOY_PLUGIN, encoding="utf-8")
    info = site / "toy_rbv_masks-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-rbv-masks\nVersion: 0.1\n",
                                   encoding="utf-8")
    (info / "entry_points.txt").write_text("[robustbench_vit.plugins]\ntoy = toy_rbv_masks\n",
                                           encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(site), os.environ.get("PYTHONPATH")) if p))
    (root / "masked.yaml").write_text(SUITE, encoding="utf-8")
    run = subprocess.run([rbv_bin, "evaluate", "masked.yaml", "-q"], capture_output=True,
                         text=True, env=env, cwd=root, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    board = subprocess.run([rbv_bin, "leaderboard", "-f", "json"], capture_output=True,
                           text=True, env=env, cwd=root, timeout=300)
    assert board.returncode == 0, board.stderr
    text = subprocess.run([rbv_bin, "leaderboard"], capture_output=True, text=True, env=env,
                          cwd=root, timeout=300)
    gate = subprocess.run([rbv_bin, "gate", "masked.yaml"], capture_output=True, text=True,
                          env=env, cwd=root, timeout=300)
    html = subprocess.run([rbv_bin, "export-html", "masked", "-o", "page.html"],
                          capture_output=True, text=True, env=env, cwd=root, timeout=300)
    assert html.returncode == 0, html.stderr
    return {"rows": json.loads(board.stdout), "gate": gate, "text": text.stdout,
            "page": (root / "page.html").read_text(encoding="utf-8")}


def _row(rows: list[dict], defense: str, scenario: str, metric: str,
         source: str | None = None) -> dict:
    found = [r for r in rows if r["defense"] == defense and r["scenario"] == scenario
             and r["metric"] == metric and r["params"].get("source") == source]
    assert len(found) == 1, (defense, scenario, metric, source, found)
    return found[0]


@pytest.mark.slow
@pytest.mark.parametrize("defense", ["toy_saturate", "toy_quantize", "toy_noise"])
def test_masked_defenses_are_flagged_by_two_indicators(masked_results: dict,
                                                       defense: str) -> None:
    rows = masked_results["rows"]
    pgd = _row(rows, defense, "attack:pgd", "robust_accuracy")
    fired = set(pgd["flags"]) & set(INDICATORS)
    assert len(fired) >= 2, pgd["flags"]
    worst = _row(rows, defense, "attack:worst_case", WORST_CASE)
    square = _row(rows, defense, "attack:square", "robust_accuracy")
    transfer = _row(rows, defense, "attack:pgd", "robust_accuracy", source="base")
    assert worst["value"] <= min(square["value"], transfer["value"], pgd["value"])
    assert worst["value"] < pgd["value"] - 0.1  # the worst case sees through the masking


@pytest.mark.slow
def test_the_undefended_model_raises_no_flag(masked_results: dict) -> None:
    rows = [r for r in masked_results["rows"] if r["defense"] == "none"]
    assert rows and all(r["flags"] == [] for r in rows), [r for r in rows if r["flags"]]
    indicators = {r["metric"] for r in rows if r["scenario"] == "attack:pgd"}
    assert {"unbounded_success_rate", "zero_gradient_rate", "convergence_gap"} <= indicators


@pytest.mark.slow
def test_flags_reach_gates_and_the_page(masked_results: dict) -> None:
    gate = masked_results["gate"]
    assert gate.returncode == 1
    failed = [line for line in gate.stdout.splitlines() if " FAILED " in line]
    assert len(failed) == 3 and all("flagged:" in line for line in failed), gate.stdout
    assert "/none/attack:pgd" in gate.stdout
    assert not any("better_than" in line for line in failed)
    assert "paired, the same" in gate.stdout and "interval of the gain" in gate.stdout
    notes = masked_results["text"].split("flagged (", 1)[1].splitlines()[1:]
    assert {line.split("/", 1)[1].split("(")[0].split(":")[0] for line in notes} \
        == {"toy_saturate", "toy_quantize", "toy_noise"}  # the terminal table says it too
    page = masked_results["page"]
    assert 'class="flag-badge"' in page and FLAGS.get("no_gradient").explanation in page
    assert "worst_case_robust_accuracy" in page


# --- per-batch indicators on small, exact cases -------------------------------------------------


class Saturated(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * 1e4


def _probe_counts(model: nn.Module, base: nn.Module | None, x: torch.Tensor, y: torch.Tensor,
                  **attack: object) -> dict[str, list[int]]:
    pgd = validate_params(ATTACKS.get("pgd"), {"eps": 8 / 255, "steps": 5, **attack})
    probe = BatchProbe(attack=pgd, model=model, view=model, base=base, eot=1, seed=0)
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    adv = pgd.perturb(model, x[correct], y[correct], seed=0)
    x_adv = x.clone()
    x_adv[correct] = adv
    with torch.no_grad():
        robust = correct & (model(x_adv).argmax(1) == y)
    return cell_counts(probe, x, y, correct, robust, x_adv, examples=len(x))


def test_indicators_on_an_undefended_model_do_not_fire(
        digits_model: nn.Module, digits_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits_batch[0][:24], digits_batch[1][:24]
    counts = _probe_counts(digits_model, None, x, y)
    rows, fired = indicator_rows(counts, eot=1)
    assert fired == []
    assert counts["unbounded"][0] == counts["unbounded"][1] > 20
    assert counts["no_gradient"][0] == 0 and counts["randomized"][0] == 0
    assert {r.metric for r in rows} >= {"unbounded_success_rate", "convergence_gap"}


def test_saturated_logits_fire_unbounded_no_gradient_and_transfer(
        digits_model: nn.Module, digits_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits_batch[0][:24], digits_batch[1][:24]
    counts = _probe_counts(Saturated(digits_model).eval(), digits_model, x, y,
                           random_start=False)
    _rows, fired = indicator_rows(counts, eot=1)
    assert {"unbounded", "no_gradient", "transfer", "silent"} <= set(fired)


def test_counts_of_chunks_add_up() -> None:
    assert merge_counts([{"unbounded": [3, 4]}, {"unbounded": [1, 2], "transfer": [1, 0, 2]}]) \
        == {"unbounded": [4, 6], "transfer": [1, 0, 2]}


def test_paired_difference_interval() -> None:
    assert paired_difference(0, 0, 0) == (0.0, -1.0, 1.0)
    diff, low, high = paired_difference(0, 0, 200)
    assert diff == 0 and low < 0 < high  # no discordant pair: no evidence either way
    assert paired_difference(9, 0, 10)[1] > 0  # 9 of 10 images robust only under one attack
    assert paired_difference(3, 0, 10)[1] < 0  # 3 of 10: not enough
    low_b, high_b = paired_difference(20, 5, 200)[1:]
    assert low_b > 0 and high_b < 0.2


def test_example_bits_round_trip_and_concat() -> None:
    bits = np.array([1, 0, 1, 1, 0, 0, 0, 1, 1], dtype=bool)
    whole = ExampleBits(data="k", start=0, bits=bits)
    assert np.array_equal(ExampleBits.decode(whole.encode()).bits, bits)
    parts = [ExampleBits(data="k", start=0, bits=bits[:4]), ExampleBits(data="k", start=4,
                                                                        bits=bits[4:])]
    assert ExampleBits.concat(parts).encode() == whole.encode()
    with pytest.raises(ValueError):
        ExampleBits.concat(parts[::-1])


# --- the worst case and the cross-attack flag over stored rows ----------------------------------


def _attack_row(scenario: str, bits: list[int], defense: str = "d", **params: object) -> dict:
    encoded = ExampleBits(data="slice", start=0, bits=np.array(bits, dtype=bool)).encode()
    return {"suite": "s", "model": "m", "defense": defense, "scenario": scenario,
            "params": json.dumps({"norm": "Linf", "eps": 8 / 255, **params}, sort_keys=True),
            "metric": "robust_accuracy", "value": sum(bits) / len(bits), "n": len(bits),
            "ci_low": 0.0, "ci_high": 1.0, "flags": None, "examples": encoded}


def test_worst_case_is_at_most_every_attack_and_flags_the_beaten_gradient_attack() -> None:
    rng = np.random.default_rng(0)
    pgd = [1] * 30 + [0] * 10  # a masked gradient attack: 75% robust
    square = [int(v) for v in rng.random(40) < 0.3]
    other_eps = _attack_row("attack:pgd", [0] * 40)
    other_eps["params"] = json.dumps({"norm": "Linf", "eps": 4 / 255})
    table = pd.DataFrame([_attack_row("attack:pgd", pgd), _attack_row("attack:square", square),
                          _attack_row("attack:fgsm", pgd), other_eps])
    worst = worst_case_rows(table)
    assert len(worst) == 1  # the 4/255 attack is alone in its threat model
    value = float(worst["value"].iat[0])
    assert value <= min(sum(pgd), sum(square)) / 40
    assert value == sum(a and b for a, b in zip(pgd, square, strict=True)) / 40
    assert json.loads(worst["params"].iat[0]) == {"norm": "Linf", "eps": 8 / 255}
    flags = blackbox_flags(table)
    assert set(flags.index) == {0, 2} and all(f == ["blackbox_beats_whitebox"] for f in flags)


def test_no_blackbox_flag_when_the_gradient_attack_is_stronger() -> None:
    table = pd.DataFrame([_attack_row("attack:pgd", [0] * 30 + [1] * 10),
                          _attack_row("attack:square", [1] * 40),
                          _attack_row("attack:pgd", [1] * 40, source="base")])
    assert blackbox_flags(table).empty


# --- the attack scenario: chunks, indicators off, EOT from the defense --------------------------


def _context(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, first_batch: int = 0,
             defense: object = None, base: nn.Module | None = None) -> CellContext:
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    cfg = ModelConfig(name="vit", source="zoo:digits_vit")
    return CellContext(model=model, loader=loader, device=torch.device("cpu"), seed=0,
                       num_classes=10, data_key="slice", first_batch=first_batch,
                       defense=defense, model_config=cfg,
                       load_model=(lambda _cfg: base) if base is not None else None)


def test_chunks_merge_to_the_whole_cell_with_outcomes_and_indicators(
        digits_model: nn.Module, digits_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits_batch[0][:32], digits_batch[1][:32]
    scenario = AttackScenario.from_params({"name": "pgd", "eps": 4 / 255, "steps": 3,
                                           "indicator_examples": 6})
    whole = scenario.run(_context(digits_model, x, y))
    parts = [scenario.partial(_context(digits_model, x[:16], y[:16])),
             scenario.partial(_context(digits_model, x[16:], y[16:], first_batch=1))]
    assert scenario.merge(parts) == whole
    [robust] = [m for m in whole if m.metric == "robust_accuracy"]
    bits = ExampleBits.decode(robust.examples or "").bits
    assert len(bits) == 32 and bits.sum() / 32 == robust.value


def test_indicators_do_not_change_the_attack_numbers(
        digits_model: nn.Module, digits_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = digits_batch[0][:32], digits_batch[1][:32]
    noisy = NoisyModel(digits_model)
    params = {"name": "pgd", "eps": 4 / 255, "steps": 3}
    torch.manual_seed(0)
    on = AttackScenario.from_params(params).run(_context(noisy, x, y))
    torch.manual_seed(0)
    off = AttackScenario.from_params({**params, "indicators": False}).run(_context(noisy, x, y))
    main = {"robust_accuracy", "attack_success_rate"}
    assert [(m.metric, m.value) for m in on if m.metric in main] \
        == [(m.metric, m.value) for m in off if m.metric in main]
    assert {m.metric for m in off} == main and all(not m.flags for m in off)
    assert any("randomized" in m.flags for m in on)


class NoisyModel(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x + 0.1 * torch.randn_like(x)).clamp(0, 1))


def test_a_randomized_defense_is_attacked_with_its_declared_eot(
        digits_model: nn.Module, digits_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    from robustbench_vit.core.registry import DEFENSES

    defense = validate_params(DEFENSES.get("layer_shuffle"), {"eval_order": "random"})
    assert defense.eot_samples() > 1
    assert defense.training_settings() == validate_params(
        DEFENSES.get("layer_shuffle"), {}).training_settings()  # one checkpoint for both orders
    model = defense.apply(copy.deepcopy(digits_model)).eval()
    x, y = digits_batch[0][:8], digits_batch[1][:8]
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))  # a fresh block order per forward
    scenario = AttackScenario.from_params({"name": "pgd", "eps": 4 / 255, "steps": 2,
                                           "indicator_examples": 4})
    assert scenario.eot_samples(_context(model, x, y, defense=defense)) == defense.eot_samples()
    rows = scenario.run(_context(model, x, y, defense=defense))
    assert not any("randomized" in m.flags for m in rows)  # EOT was used: no flag
    assert any(m.metric == "output_variability" and m.value > 0 for m in rows)


# --- the variants the indicators run, for every registered attack -------------------------------


@pytest.mark.parametrize("name", ATTACKS.names())
def test_unbounded_and_stronger_variants(name: str) -> None:
    attack = validate_params(ATTACKS.get(name), {})
    threat = attack.threat_model()
    unbounded = attack.unbounded(3 * 32 * 32)
    if threat is None or name in ("fgsm", "square"):
        assert unbounded is None
    else:
        assert type(unbounded) is type(attack)
        diameter = (3 * 32 * 32) ** 0.5
        assert unbounded.threat_model() == (threat[0], 1.0 if threat[0] == "Linf" else diameter)
        assert getattr(unbounded, "random_start", False) is False
        assert getattr(unbounded, "steps", 20) >= 20
    stronger = attack.stronger()
    if stronger is not None:
        assert type(stronger) is type(attack)
        assert any(getattr(stronger, f) == 2 * getattr(attack, f) for f in ("steps", "n_queries")
                   if hasattr(attack, f))


def test_a_transfer_from_the_base_model_of_an_undefended_cell_is_skipped(
        digits_model: nn.Module, digits_batch: tuple[torch.Tensor, torch.Tensor]) -> None:
    from robustbench_vit.core.errors import ScenarioNotApplicable
    from robustbench_vit.core.registry import DEFENSES
    from robustbench_vit.scenarios.base import PlanContext

    scenario = AttackScenario.from_params({"name": "pgd", "source": "base"})
    none = validate_params(DEFENSES.get("none"), {})
    assert "white-box" in (scenario.unsupported(PlanContext(model=digits_model,
                                                            defense=none)) or "")
    x, y = digits_batch[0][:8], digits_batch[1][:8]
    with pytest.raises(ScenarioNotApplicable, match="white-box"):
        scenario.run(_context(digits_model, x, y, defense=none, base=digits_model))
    noisy = NoisyModel(digits_model)
    rows = scenario.run(_context(noisy, x, y, base=digits_model))
    assert {m.metric for m in rows} == {"robust_accuracy", "attack_success_rate"}  # no indicators
