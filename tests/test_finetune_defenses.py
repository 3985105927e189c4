"""Training defenses on timm: and file: models: the suite's `finetune:` names the data.

Validation (a training defense without `finetune:`, a bad finetune dataset) is checked through
`load_suite` and the installed console script; fine-tuning through real (small) training runs on
the bundled digits, with the fine-tunes cached by content hash.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest
import torch

from robustbench_vit import SuiteError, load_suite
from robustbench_vit.config.suite import Suite
from robustbench_vit.core.cells import _weights
from robustbench_vit.core.params import validate_params
from robustbench_vit.core.records import CellResult
from robustbench_vit.core.registry import DEFENSES
from robustbench_vit.execution import evaluate
from robustbench_vit.models import user_finetune
from robustbench_vit.models.sources import build_model

DIGITS_KWARGS = ("{img_size: 32, patch_size: 8, embed_dim: 64, depth: 4, num_heads: 4, "
                 "num_classes: 10}")
DIGITS_DATA = "{dataset: digits, split: train, image_size: 32}"

HEAD = """\
suite: ft
data: {dataset: digits, split: test, image_size: 32, batch_size: 256}
scenarios:
  - {kind: clean}
models:
"""


def timm_model(name: str, defenses: str, finetune: str | None = None) -> str:
    """A models: entry for the digits-shaped timm ViT (random init)."""
    text = (f"  - name: {name}\n    source: timm:vit_tiny_patch16_224\n"
            f"    kwargs: {DIGITS_KWARGS}\n    defenses: {defenses}\n")
    return text + (f"    finetune: {finetune}\n" if finetune else "")


def write(folder: Path, text: str) -> Path:
    """Write suite.yaml into `folder`; its path."""
    path = folder.resolve() / "suite.yaml"
    path.write_text(text)
    return path


def problems(folder: Path, text: str) -> dict[str, str]:
    """{field path: message} of a suite that must not validate."""
    with pytest.raises(SuiteError) as info:
        load_suite(write(folder, text))
    assert info.value.exit_code == 2
    return dict(info.value.problems)


def accuracy(suite: Suite, defense: str) -> float:
    """Clean accuracy of the suite's first model with `defense` (its clean cell, evaluated)."""
    cell = next(c for c in suite.cells("cpu") if c.defense == defense)
    result: CellResult = evaluate.evaluate_cell(cell)
    assert result.status == "ok", result.error
    return next(m.value for m in result.measurements if m.metric == "accuracy")


# -- validation -----------------------------------------------------------------------------------

def test_training_defense_on_timm_model_needs_finetune(tmp_path: Path) -> None:
    found = problems(tmp_path, HEAD + timm_model("m", "[none, polyphase, {name: tap_adl}]"))
    assert found["models[0].defenses[1]"] == (
        "polyphase is a training defense: a timm: model needs finetune: {data: ...} "
        "(the data to fine-tune it on)")
    assert "tap_adl is a training defense" in found["models[0].defenses[2]"]
    assert set(found) == {"models[0].defenses[1]", "models[0].defenses[2]"}


def test_smoothing_needs_finetune_only_when_it_trains(tmp_path: Path) -> None:
    text = HEAD + timm_model("m", "[smoothing, {name: smoothing, train: true}]")
    assert set(problems(tmp_path, text)) == {"models[0].defenses[1]"}


def test_training_defense_on_file_model_needs_finetune(tmp_path: Path) -> None:
    (tmp_path / "w.safetensors").write_bytes(b"")
    text = HEAD + ("  - name: f\n    source: file:w.safetensors\n    arch: vit_tiny_patch16_224\n"
                   "    defenses: [layer_shuffle]\n")
    assert problems(tmp_path, text)["models[0].defenses[0]"].startswith(
        "layer_shuffle is a training defense: a file: model needs finetune: {data: ...}")


def test_bad_finetune_settings_are_located(tmp_path: Path) -> None:
    found = problems(tmp_path, HEAD + timm_model(
        "a", "[polyphase]", "{data: {dataset: digitz, split: train}}") + timm_model(
        "b", "[polyphase]", "{data: {dataset: digits, image_size: 4}}"))
    assert found["models[0].finetune.data.dataset"].startswith("unknown dataset 'digitz'")
    assert "did you mean 'digits'" in found["models[0].finetune.data.dataset"]
    assert "models[1].finetune.data.image_size" in found
    assert not any(".defenses[" in where for where in found)  # finetune: given, so no second error


def test_unknown_finetune_key_lists_the_allowed_ones(tmp_path: Path) -> None:
    found = problems(tmp_path, HEAD + timm_model(
        "m", "[polyphase]", "{data: {dataset: digits}, epochz: 3}"))
    assert found["models[0].finetune.epochz"].startswith("unknown key 'epochz'; did you mean "
                                                         "'epochs'?")
    assert "batch_size" in found["models[0].finetune.epochz"]
    found = problems(tmp_path, HEAD + timm_model("m", "[polyphase]", "{epochs: 3}"))
    assert found["models[0].finetune.data"] == "required field is missing"


def test_console_script_rejects_training_defense_without_data(tmp_path: Path,
                                                              rbv_bin: str) -> None:
    text = HEAD + timm_model("m", "[none, polyphase]") + timm_model(
        "n", "[tap_adl]", "{data: {dataset: digitz}}")
    path = write(tmp_path, text)
    proc = subprocess.run([rbv_bin, "validate", str(path)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()  # the first one starts with "error: "
    assert any(line.endswith(f"{path}: models[0].defenses[1]: polyphase is a training defense: "
                             "a timm: model needs finetune: {data: ...} (the data to fine-tune "
                             "it on)") for line in lines), proc.stderr
    assert any(f"{path}: models[1].finetune.data.dataset: unknown dataset 'digitz'" in line
               for line in lines), proc.stderr


def test_finetune_settings_are_plain_data_and_keys_of_other_models_stay(tmp_path: Path) -> None:
    text = HEAD + timm_model("plain", "[none]") + timm_model(
        "tuned", "[none, tap_adl]", f"{{data: {DIGITS_DATA}, epochs: 2}}") + timm_model(
        "based", "[none]", f"{{data: {DIGITS_DATA}, base: true}}")
    suite = load_suite(write(tmp_path, text))
    plain, tuned, based = suite.models
    assert plain.finetune is None
    assert _weights(plain) == {k: v for k, v in asdict(plain).items()
                               if k not in ("name", "family", "finetune")}
    assert tuned.finetune == {
        "data": {"dataset": "digits", "split": "train", "image_size": 32, "test_fraction": 0.25,
                 "split_seed": 0, "task": "digits"},
        "epochs": 2, "lr": 1e-3, "batch_size": 64, "weight_decay": 0.05, "base": False}
    # base: false leaves the model's weights alone; base: true gives it new ones
    assert tuned.fingerprint == plain.fingerprint != based.fingerprint
    assert based.fingerprint.startswith("finetuned-")
    assert len({c.key for c in suite.cells()}) == 4


# -- fine-tuning ----------------------------------------------------------------------------------

def cached_checkpoints(cache: Path) -> dict[str, float]:
    """{file name: mtime} of the fine-tunes in a cache folder."""
    return {p.name: p.stat().st_mtime for p in (cache / "finetune").glob("*.safetensors")}


@pytest.fixture()
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty $RBV_CACHE, and no models remembered in-process."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("RBV_CACHE", str(cache))
    evaluate._MODEL_CACHE.clear()
    yield cache
    evaluate._MODEL_CACHE.clear()


def test_finetunes_are_cached_and_recorded(tmp_path: Path, fresh_cache: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    text = HEAD + timm_model("m", "[none, {name: tap_adl, epochs: 1}]",
                             f"{{data: {DIGITS_DATA}, base: true, epochs: 1, lr: 0.003}}")
    suite = load_suite(write(tmp_path, text))
    first = {d: accuracy(suite, d) for d in ("none", "tap_adl")}
    built = cached_checkpoints(fresh_cache)
    assert len(built) == 2  # the base fine-tune and the defended one
    base = user_finetune.base_path(suite.models[0])
    record = json.loads(base.with_suffix(".json").read_text())
    assert record["defense"] is None and record["accuracy_on"] == "test"
    assert record["test_accuracy"] == pytest.approx(first["none"], abs=1e-9)  # same test split
    assert record["finetune"] == suite.models[0].finetune and record["torch"] == torch.__version__
    assert {"train_seconds", "created_at", "fingerprint", "train"} <= set(record)
    defended = json.loads(next(fresh_cache.glob("finetune/*+TapAdl-*.json")).read_text())
    assert defended["defense"] == "TapAdl" and defended["train"]["epochs"] == 1  # its own epochs
    assert defended["train"]["lr"] == 1e-3  # the defense's lr, not finetune's

    def no_training(*args: Any, **kwargs: Any) -> float:
        raise AssertionError("a cached fine-tune was trained again")

    monkeypatch.setattr(user_finetune, "train_classifier", no_training)
    evaluate._MODEL_CACHE.clear()
    again = load_suite(write(tmp_path, text))
    assert {d: accuracy(again, d) for d in ("none", "tap_adl")} == first
    assert cached_checkpoints(fresh_cache) == built


def test_training_accuracy_is_labelled_without_a_test_split(tmp_path: Path,
                                                            fresh_cache: Path) -> None:
    text = HEAD + timm_model("m", "[none]", "{data: {dataset: synthetic, size: 64, image_size: 32},"
                                            " base: true, epochs: 1}")
    suite = load_suite(write(tmp_path, text))
    accuracy(suite, "none")
    record = json.loads(user_finetune.base_path(suite.models[0]).with_suffix(".json").read_text())
    assert "test_accuracy" not in record and 0 <= record["train_accuracy"] <= 1
    assert record["accuracy_on"] == "training data (no held-out split)"


def test_training_defense_starts_from_a_file_checkpoint(tmp_path: Path, fresh_cache: Path,
                                                        digits_model: torch.nn.Module) -> None:
    from safetensors.torch import load_file, save_file

    state = {k: v.contiguous() for k, v in digits_model.backbone.state_dict().items()}
    save_file(state, str(tmp_path / "digits.safetensors"))
    text = HEAD + (f"  - name: f\n    source: file:digits.safetensors\n"
                   f"    arch: vit_tiny_patch16_224\n    kwargs: {DIGITS_KWARGS}\n"
                   f"    defenses: [none, {{name: tap_adl, epochs: 1}}]\n"
                   f"    finetune: {{data: {DIGITS_DATA}, epochs: 1}}\n")
    suite = load_suite(write(tmp_path, text))
    base, defended = accuracy(suite, "none"), accuracy(suite, "tap_adl")
    assert base >= 0.9
    assert len(cached_checkpoints(fresh_cache)) == 1  # base: false: the model is not re-trained
    # the defended weights stayed near the file's (one epoch moves them little), far from a
    # random init's; one epoch from random weights would not reach this accuracy either
    tuned = load_file(str(next((fresh_cache / "finetune").glob("*+TapAdl-*.safetensors"))))
    name = "patch_embed.proj.weight"
    random_init = build_model(replace(suite.models[0], source="timm:vit_tiny_patch16_224"))
    moved = (tuned[f"backbone.{name}"] - state[name]).norm()
    assert moved < 0.25 * (random_init.backbone.state_dict()[name] - state[name]).norm()
    assert defended >= 0.85, (base, defended)
    # the defense's checkpoint follows the file's content
    other = replace(suite.models[0], fingerprint="another-file")
    defense = validate_params(DEFENSES.get("tap_adl"), {"epochs": 1})
    assert user_finetune.defended_path(other, defense) != \
        user_finetune.defended_path(suite.models[0], defense)


def test_too_small_head_is_a_clear_error(tmp_path: Path, fresh_cache: Path) -> None:
    text = HEAD + timm_model("m", "[none]", f"{{data: {DIGITS_DATA}, base: true, epochs: 1}}")
    suite = load_suite(write(tmp_path, text.replace("num_classes: 10", "num_classes: 3")))
    cell = suite.cells("cpu")[0]
    result = evaluate.evaluate_cell(cell)
    assert result.status == "error"
    assert "has 3 outputs but its finetune data has 10 classes" in (result.error or "")


@pytest.mark.slow
def test_timm_model_fine_tuned_with_each_training_defense(tmp_path: Path) -> None:
    """The digits_vit shape from random init, fine-tuned on digits (base: true), then with each
    training defense at its defaults; cached in the tests' $RBV_CACHE (≈3 min cold on 2 cores)."""
    defenses = ("polyphase", "tap_adl", "layer_shuffle")
    text = HEAD + timm_model("m", f"[none, {', '.join(defenses)}]",
                             f"{{data: {DIGITS_DATA}, base: true, epochs: 30, lr: 0.003}}")
    suite = load_suite(write(tmp_path, text))
    start = time.perf_counter()
    base = accuracy(suite, "none")
    times = {"none": time.perf_counter() - start}
    assert base >= 0.9
    for name in defenses:
        start = time.perf_counter()
        acc = accuracy(suite, name)
        times[name] = time.perf_counter() - start
        assert acc >= base - 0.05, (name, acc, base)
    print("seconds per defense (training included when not cached):", times)
