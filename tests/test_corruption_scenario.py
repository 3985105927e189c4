"""The corruption scenario: shared corrupted-image cache, parallel generation, mCE, ImageNet-C."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Subset, TensorDataset

from robustbench_vit.config.load import load_suite
from robustbench_vit.core.cells import canonical_json
from robustbench_vit.core.errors import DataError, SuiteError
from robustbench_vit.core.params import ParamError, validate_params
from robustbench_vit.core.plugins import load_plugins
from robustbench_vit.data import corruption_cache as corrupted
from robustbench_vit.data.corruptions import ALL, BENCHMARK, EXTRA, SEVERITIES
from robustbench_vit.data.datasets import Digits, ImageNetC, precomputed_transform
from robustbench_vit.data.published import published_table
from robustbench_vit.execution.evaluate import evaluate_cell
from robustbench_vit.results import table as lb
from robustbench_vit.results.store import ResultStore
from robustbench_vit.scenarios.base import CellContext
from robustbench_vit.scenarios.corruption import mce as aggregates
from robustbench_vit.scenarios.corruption.scenario import CorruptionScenario, Share

NAMES = ["fog", "gaussian_noise", "contrast"]

load_plugins()


@pytest.fixture()
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty corrupted-images cache folder."""
    folder = tmp_path / "corrupted"
    folder.mkdir()
    monkeypatch.setattr(corrupted, "corrupted_dir", lambda: folder)
    return folder


@pytest.fixture()
def generator_calls(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The corruption names of every call of the generator (corrupt_images)."""
    calls: list[list[str]] = []
    real = corrupted.corrupt_images

    def counting(images: np.ndarray, names: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(list(names))
        return real(images, names, *args, **kwargs)

    monkeypatch.setattr(corrupted, "corrupt_images", counting)
    return calls


def digits_context(model: nn.Module, n: int = 32, seed: int = 0) -> CellContext:
    """A cell context over the first `n` digits test images."""
    x, y = Digits(split="test").load().tensors
    loader = DataLoader(TensorDataset(x[:n], y[:n]), batch_size=16)
    return CellContext(model=model, loader=loader, device=torch.device("cpu"), seed=seed,
                       num_classes=10)


def digits_uint8(n: int = 24) -> np.ndarray:
    x, _ = Digits(split="test").load().tensors
    return corrupted.to_uint8(x[:n])


def run(model: nn.Module, **params: Any) -> list[tuple[str | None, str, float, int]]:
    scenario = CorruptionScenario.from_params({"names": NAMES, "severity": 3, **params})
    rows = scenario.run(digits_context(model))
    return [(m.scenario_name, m.metric, m.value, m.n) for m in rows]


# --- parameters ----------------------------------------------------------------------------------

def test_name_shorthands_and_order() -> None:
    assert CorruptionScenario(names="all", severity=1).corruption_names() == list(ALL)
    assert CorruptionScenario(names="benchmark", severity=1).corruption_names() == list(BENCHMARK)
    assert CorruptionScenario(names=["fog", "snow", "fog"], severity=1).corruption_names() == [
        "fog", "snow"]


def test_unknown_corruption_is_located_with_did_you_mean() -> None:
    with pytest.raises(ParamError) as info:
        CorruptionScenario.from_params({"names": ["fog", "gausian_noise"], "severity": 2})
    assert info.value.field == "names[1]"
    assert "did you mean 'gaussian_noise'" in str(info.value)


def test_suite_locates_bad_names_and_severities(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("""\
suite: bad
data: {dataset: synthetic, size: 8}
models: [{name: m, source: 'timm:vit_tiny_patch16_224'}]
scenarios:
  - {kind: clean}
  - {kind: corruption, names: [fgo], sweep: {severity: [1, 2]}}
  - {kind: corruption, names: all, sweep: {severity: [1, 6]}}
  - {kind: corruption, names: everything, severity: 1}
  - {kind: corruption, baseline: 'published:alexnett', severity: 1}
""")
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    problems = dict(info.value.problems)
    assert "did you mean 'fog'" in problems["scenarios[1].names[0]"]
    assert "scenarios[2].sweep.severity[1]" in problems
    assert any(p.startswith("scenarios[3].names") for p in problems)
    assert "published:alexnet" in problems["scenarios[4].baseline"]


# --- the generator and its cache -----------------------------------------------------------------

def test_same_seed_same_images_other_seed_differs() -> None:
    images = digits_uint8(8)
    first = corrupted.corrupt_images(images, ["gaussian_noise", "fog", "contrast"], 3, seed=0)
    again = corrupted.corrupt_images(images, ["gaussian_noise", "fog", "contrast"], 3, seed=0)
    other = corrupted.corrupt_images(images, ["gaussian_noise", "fog", "contrast"], 3, seed=1)
    for name in first:
        assert first[name].shape == images.shape and first[name].dtype == np.uint8
        assert np.array_equal(first[name], again[name])
        assert not np.array_equal(first[name], images)
    assert not np.array_equal(first["gaussian_noise"], other["gaussian_noise"])
    assert not np.array_equal(first["fog"], other["fog"])
    assert np.array_equal(first["contrast"], other["contrast"])  # not random: ignores the seed


def test_chunked_equals_whole() -> None:
    images = digits_uint8(10)
    whole = corrupted.corrupt_chunk(images, "gaussian_noise", 2, 5, 0)
    parts = [corrupted.corrupt_chunk(images[i:i + 3], "gaussian_noise", 2, 5, i)
             for i in range(0, 10, 3)]
    assert np.array_equal(whole, np.concatenate(parts))


def test_parallel_workers_equal_single_process() -> None:
    images = digits_uint8(20)
    names = ["glass_blur", "gaussian_noise", "spatter"]
    single = corrupted.corrupt_images(images, names, 4, seed=3, workers=1)
    done: list[str] = []
    parallel = corrupted.corrupt_images(images, names, 4, seed=3, workers=2,
                                        on_done=lambda name, _: done.append(name))
    assert sorted(done) == sorted(names)
    for name in names:
        assert np.array_equal(single[name], parallel[name]), name


def test_auto_workers_stay_in_process_for_small_jobs() -> None:
    cpus = min(corrupted.available_cpus(), corrupted.MAX_AUTO_WORKERS)
    assert corrupted.resolve_workers(0, 10, 3) == 1
    assert corrupted.resolve_workers(3, 10, 3) == 3
    assert corrupted.resolve_workers(0, 450, 19) == cpus
    assert corrupted.resolve_workers(0, 30, 3, pixels_per_image=224 * 224) == cpus  # 224 px
    assert corrupted.resolve_workers(0, 1, 1, pixels_per_image=224 * 224) == 1


def test_chunks_split_the_job_and_stay_small_at_224_px() -> None:
    assert corrupted.chunk_size(1000, 19, 2, 32 * 32 * 3) == 1000  # small images: few big tasks
    assert corrupted.chunk_size(40, 1, 2, 32 * 32 * 3) == 5        # yet every worker gets several
    big = corrupted.chunk_size(1000, 19, 2, 224 * 224 * 3)
    assert big * 224 * 224 * 3 <= corrupted.CHUNK_BYTES and big >= 16
    assert corrupted.chunk_size(1, 1, 16, 10**9) == 1


@pytest.mark.parametrize("workers", [1, 2])
def test_progress_counts_every_image_and_outputs_are_written_in_place(workers: int) -> None:
    images = digits_uint8(12)
    names = ["gaussian_noise", "contrast"]
    steps: list[int] = []
    outputs = {name: np.zeros_like(images) for name in names}
    got = corrupted.corrupt_images(images, names, 2, seed=1, workers=workers,
                                   progress=steps.append, outputs=outputs)
    assert sum(steps) == len(images) * len(names)
    if workers == 1:
        assert steps == [1] * 24  # image by image
    for name in names:
        assert got[name] is outputs[name]
        assert np.array_equal(outputs[name], corrupted.corrupt_chunk(images, name, 2, 1, 0))


def test_cached_entries_are_written_through_a_memory_map(cache: Path) -> None:
    images = digits_uint8(5)
    steps: list[int] = []
    out = corrupted.cached_corruptions(images, ["fog", "pixelate"], 2, 0, progress=steps.append)
    assert sum(steps) == 10
    for name, array in out.items():
        assert isinstance(array, np.memmap) and not array.flags.writeable
        assert np.array_equal(array, corrupted.corrupt_chunk(images, name, 2, 0, 0))
    assert not list(cache.glob(".*.tmp"))  # temporaries renamed into place


def test_a_failed_generation_leaves_no_entry_and_no_temporary(
        cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = digits_uint8(4)
    calls = {"n": 0}
    real = corrupted.corrupt_chunk

    def dies_on_third(*args: object) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 3:
            raise MemoryError("killed")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(corrupted, "corrupt_chunk", dies_on_third)
    with pytest.raises(MemoryError):
        corrupted.cached_corruptions(images, ["fog"], 1, 0, workers=1)
    assert not list(cache.glob("*.npy")) and not list(cache.glob(".*.tmp"))


def test_cache_hits_and_keys(cache: Path, generator_calls: list[list[str]],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    images = digits_uint8(6)
    first = corrupted.cached_corruptions(images, ["fog", "contrast"], 2, 0)
    assert generator_calls == [["contrast", "fog"]] or generator_calls == [["fog", "contrast"]]
    again = corrupted.cached_corruptions(images, ["contrast", "fog", "snow"], 2, 0)
    assert generator_calls[1:] == [["snow"]]  # only the missing entry is built
    for name in ("fog", "contrast"):
        assert np.array_equal(first[name], again[name])
    assert len(list(cache.glob("*.npy"))) == 3
    corrupted.cached_corruptions(images, ["fog"], 3, 0)       # another severity
    corrupted.cached_corruptions(images, ["fog"], 2, 1)       # another seed
    corrupted.cached_corruptions(images[:5], ["fog"], 2, 0)   # another slice
    monkeypatch.setattr(corrupted, "library_versions", lambda: {"imagecorruptions": "9.9"})
    corrupted.cached_corruptions(images, ["fog"], 2, 0)       # other library versions
    assert len(generator_calls) == 6
    assert len(list(cache.glob("*.npy"))) == 7
    assert not list(cache.glob("*.tmp"))


def test_damaged_cache_entry_is_rebuilt(cache: Path, generator_calls: list[list[str]]) -> None:
    images = digits_uint8(4)
    good = corrupted.cached_corruptions(images, ["fog"], 1, 0)["fog"].copy()
    (entry,) = cache.glob("*.npy")
    np.save(entry, np.zeros((2, 2, 2, 3), np.uint8))
    rebuilt = corrupted.cached_corruptions(images, ["fog"], 1, 0)["fog"]
    assert len(generator_calls) == 2 and np.array_equal(rebuilt, good)


# --- the scenario --------------------------------------------------------------------------------

def test_cached_and_uncached_runs_give_identical_rows(
        digits_model: nn.Module, cache: Path, generator_calls: list[list[str]]) -> None:
    fresh = run(digits_model)
    from_cache = run(digits_model)
    uncached = run(digits_model, cache=False)
    assert fresh == from_cache == uncached
    assert len(generator_calls) == 2  # the cached re-run generated nothing
    assert [(s, m) for s, m, _, _ in fresh] == [(None, "accuracy")] + [
        (name, "corruption_accuracy") for name in NAMES]
    clean = fresh[0][2]
    assert clean > 0.8 and all(0 <= v <= 1 and n == 32 for _, _, v, n in fresh)
    assert min(v for _, _, v, _ in fresh[1:]) < clean  # some corruption hurts


def test_two_models_share_one_cache_entry(
        digits_model: nn.Module, cache: Path, generator_calls: list[list[str]]) -> None:
    torch.manual_seed(0)
    other = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).eval()
    run(digits_model)
    run(other)
    assert len(generator_calls) == 1
    assert len(list(cache.glob("*.npy"))) == len(NAMES)


def test_progress_share_reports_the_total_once() -> None:
    steps: list[int] = []
    share = Share(steps.append, total=10, passes=3)
    for _ in range(5):
        share.pass_done()
    assert sum(steps) == 10 and steps == [3, 3, 4]


def test_progress_share_advances_within_a_pass_and_skips_to_a_pass() -> None:
    steps: list[int] = []
    share = Share(steps.append, total=100, passes=4)
    for _ in range(10):
        share.add(0.1)  # one pass, image by image
    assert sum(steps) == 25 and len(steps) > 1
    share.until(3)
    assert sum(steps) == 75
    share.until(2)  # never backwards
    share.pass_done()
    assert sum(steps) == 100


SUITE = """\
suite: corr
device: cpu
data: {dataset: digits, split: test, image_size: 32, n_examples: 12, batch_size: 6}
models:
  - name: base
    source: timm:vit_tiny_patch16_224
    kwargs: {img_size: 32, patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2, num_classes: 10}
  - name: other
    source: timm:vit_tiny_patch16_224
    kwargs: {img_size: 32, patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2, num_classes: 10}
scenarios:
  - {kind: corruption, names: [fog, contrast], baseline: base, sweep: {severity: [1, 2]}}
"""


def test_stored_rows_name_the_corruption(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "corr.yaml"
    path.write_text(SUITE)
    suite = load_suite(path)
    with ResultStore(tmp_path / "results") as store:
        for cell in suite.cells():
            result = evaluate_cell(cell)
            assert result.status == "ok", result.error
            store.commit(cell, result)
        frame = store.frame()
    assert len(list(cache.glob("*.npy"))) == 4  # 2 corruptions x 2 severities, both models
    assert set(frame["scenario"]) == {"corruption", "corruption:fog", "corruption:contrast"}
    fog = frame[frame["scenario"] == "corruption:fog"]
    assert set(fog["metric"]) == {"corruption_accuracy"}
    assert sorted(json.loads(p)["severity"] for p in fog["params"]) == [1, 1, 2, 2]
    clean = frame[frame["scenario"] == "corruption"]
    assert set(clean["metric"]) == {"accuracy"} and len(clean) == 4
    table = lb.long_table(frame)
    mce = table[table["metric"] == "mce"]
    assert list(mce["model"]) == ["base", "other"]
    params = json.loads(mce["params"].iloc[0])
    assert params == {"baseline": "base", "partial": "2/15 corruptions, severities 1,2"}
    assert mce["value"].iloc[0] == pytest.approx(100.0)


# --- mCE -----------------------------------------------------------------------------------------

def corruption_table(errors: dict[tuple[str, str], Callable[[str, int], float]],
                     clean: dict[tuple[str, str], float], baseline: str = "base",
                     drop: Callable[[str, str, int], bool] = lambda m, c, s: False,
                     ) -> pd.DataFrame:
    """A long table of corruption rows: err(c, s) per (model, defense), clean error per cell."""
    rows = []
    for (model, defense), err in errors.items():
        for s in SEVERITIES:
            params = {"names": "all", "severity": s, "baseline": baseline}
            rows.append(row(model, defense, "corruption", params, "accuracy",
                            1 - clean[(model, defense)]))
            for c in ALL:
                if not drop(model, c, s):
                    rows.append(row(model, defense, f"corruption:{c}", params,
                                    "corruption_accuracy", 1 - err(c, s)))
    return pd.DataFrame(rows, columns=lb.LONG_COLUMNS)


def row(model: str, defense: str, scenario: str, params: dict[str, Any], metric: str,
        value: float) -> dict[str, Any]:
    return {"suite": "s", "model": model, "defense": defense, "scenario": scenario,
            "params": canonical_json(params), "metric": metric, "value": value, "n": 100,
            "ci_low": None, "ci_high": None}


FACTOR = {c: (0.5, 1.0, 2.0)[i // 5] for i, c in enumerate(BENCHMARK)}
"""Model error = FACTOR x baseline error: CE_c is exactly FACTOR[c]."""


def base_err(c: str, s: int) -> float:
    return 0.1 * s if c in BENCHMARK else 0.9


def model_err(c: str, s: int) -> float:
    return FACTOR[c] * 0.1 * s if c in BENCHMARK else 0.01  # extras must not count


def derived(table: pd.DataFrame) -> dict[tuple[str, str, str], tuple[float, dict[str, Any]]]:
    out = aggregates.mce_rows(table)
    assert list(out.columns) == lb.LONG_COLUMNS
    assert set(out["scenario"]) <= {"corruption"}
    return {(m, d, metric): (v, json.loads(p)) for m, d, metric, v, p in
            zip(out["model"], out["defense"], out["metric"], out["value"], out["params"],
                strict=True)}


def test_mce_and_relative_mce_on_known_numbers() -> None:
    table = corruption_table({("base", "none"): base_err, ("m", "none"): model_err},
                             {("base", "none"): 0.05, ("m", "none"): 0.02})
    got = derived(table)
    # CE = 0.5, 1, 2 for 5 corruptions each -> mCE = 100 * 3.5 / 3
    assert got[("m", "none", "mce")][0] == pytest.approx(350 / 3)
    # relative: (k * 1.5 - 5 * 0.02) / (1.5 - 5 * 0.05) = 0.52, 1.12, 2.32 -> mean 1.32
    assert got[("m", "none", "relative_mce")][0] == pytest.approx(132.0)
    assert got[("m", "none", "mce")][1] == {"baseline": "base"}  # complete: no `partial`
    assert got[("base", "none", "mce")][0] == pytest.approx(100.0)
    assert got[("base", "none", "relative_mce")][0] == pytest.approx(100.0)


def test_mce_rows_reach_the_long_table_and_the_pivot() -> None:
    table = corruption_table({("base", "none"): base_err, ("m", "none"): model_err},
                             {("base", "none"): 0.05, ("m", "none"): 0.02})
    rows = table.assign(status="ok")
    long = lb.long_table(rows)
    mce = long[long["metric"] == "mce"].set_index("model")["value"]
    assert mce["m"] == pytest.approx(350 / 3)
    wide = lb.pivot(long)
    assert any(col.endswith(" mce") for col in wide.columns)


def test_defended_models_are_compared_with_the_undefended_baseline() -> None:
    table = corruption_table({("base", "none"): base_err, ("base", "tap"): model_err},
                             {("base", "none"): 0.05, ("base", "tap"): 0.02})
    table.loc[table["defense"] == "tap", "params"] = [
        canonical_json({**json.loads(p), "defense_params": {"k": 4}})
        for p in table.loc[table["defense"] == "tap", "params"]]
    got = derived(table)
    value, params = got[("base", "tap", "mce")]
    assert value == pytest.approx(350 / 3)
    assert params == {"baseline": "base", "defense_params": {"k": 4}}


def test_missing_severities_are_reported_as_partial() -> None:
    table = corruption_table({("base", "none"): base_err, ("m", "none"): model_err},
                             {("base", "none"): 0.05, ("m", "none"): 0.02},
                             drop=lambda m, c, s: s == 5)
    value, params = derived(table)[("m", "none", "mce")]
    assert params == {"baseline": "base", "partial": "15/15 corruptions, severities 1,2,3,4"}
    assert value == pytest.approx(350 / 3)  # CE_c = FACTOR[c] at any set of severities


def test_missing_corruption_is_reported_as_partial() -> None:
    table = corruption_table({("base", "none"): base_err, ("m", "none"): model_err},
                             {("base", "none"): 0.05, ("m", "none"): 0.02},
                             drop=lambda m, c, s: m == "m" and c == BENCHMARK[-1])
    value, params = derived(table)[("m", "none", "mce")]
    assert params["partial"] == "14/15 corruptions, severities 1,2,3,4,5"
    assert value == pytest.approx(100 * (5 * 0.5 + 5 * 1.0 + 4 * 2.0) / 14)


def test_undefined_corruption_errors_are_left_out() -> None:
    def perfect_on_fog(c: str, s: int) -> float:
        return 0.0 if c == "fog" else base_err(c, s)

    table = corruption_table({("base", "none"): perfect_on_fog, ("m", "none"): model_err},
                             {("base", "none"): 0.05, ("m", "none"): 0.02})
    value, params = derived(table)[("m", "none", "mce")]
    assert params["partial"].startswith("14/15 corruptions")
    assert np.isfinite(value)


def test_no_mce_without_baseline_rows() -> None:
    table = corruption_table({("m", "none"): model_err}, {("m", "none"): 0.02},
                             baseline="missing")
    assert aggregates.mce_rows(table).empty
    no_baseline = corruption_table({("m", "none"): model_err}, {("m", "none"): 0.02},
                                   baseline=None)  # type: ignore[arg-type]
    assert aggregates.mce_rows(no_baseline).empty


def test_published_alexnet_baseline() -> None:
    alexnet = published_table("published:alexnet")
    assert len(alexnet.errors) == 75 and alexnet.clean == pytest.approx(0.4345)
    mean = {c: np.mean([alexnet.errors[(c, s)] for s in SEVERITIES]) for c in BENCHMARK}
    assert mean["gaussian_noise"] == pytest.approx(0.886428, abs=1e-6)  # AugMix's ALEXNET_ERR
    assert mean["jpeg_compression"] == pytest.approx(0.606500, abs=1e-6)

    def half_of_alexnet(c: str, s: int) -> float:
        return 0.5 * alexnet.errors[(c, s)] if c in BENCHMARK else 0.3

    table = corruption_table({("m", "none"): half_of_alexnet}, {("m", "none"): 0.2},
                             baseline="published:alexnet")
    got = derived(table)
    assert got[("m", "none", "mce")] == (pytest.approx(50.0), {"baseline": "published:alexnet"})
    expected = np.mean([(0.5 * 5 * mean[c] - 5 * 0.2) / (5 * mean[c] - 5 * 0.4345)
                        for c in BENCHMARK])
    assert got[("m", "none", "relative_mce")][0] == pytest.approx(100 * expected)


def test_extra_corruptions_are_not_in_mce() -> None:
    assert set(EXTRA).isdisjoint(BENCHMARK)
    table = corruption_table({("base", "none"): base_err, ("m", "none"): model_err},
                             {("base", "none"): 0.05, ("m", "none"): 0.02})
    extras = table["scenario"].isin([f"corruption:{c}" for c in EXTRA])
    assert extras.any()
    assert derived(table[~extras])[("m", "none", "mce")] == derived(table)[("m", "none", "mce")]


# --- ImageNet-C files ----------------------------------------------------------------------------

SHADE = {("fog", 1): 200, ("fog", 3): 150, ("gaussian_noise", 3): 60, ("clean", 0): 250}


def write_tree(root: Path, size: int = 16) -> None:
    """root/<corruption>/<severity>/<wnid>/<name>.png: 2 classes x 3 images, one shade per folder;
    the class-1 images are half as bright, so brightness tells the class."""
    for (corruption, severity), shade in SHADE.items():
        folder = root / "clean" if corruption == "clean" else root / corruption / str(severity)
        for label, wnid in enumerate(["n01440764", "n01443537"]):
            (folder / wnid).mkdir(parents=True)
            for i in range(3):
                value = shade // (label + 1) - i
                pixels = np.full((size, size, 3), value, np.uint8)
                Image.fromarray(pixels).save(folder / wnid / f"ILSVRC2012_val_{label}{i}.png")


def test_imagenet_c_layout_loads(tmp_path: Path) -> None:
    write_tree(tmp_path)
    source = ImageNetC(root=str(tmp_path), corruption="fog", severity=3, image_size=16)
    data = source.load(None)
    assert len(data) == 6 and source.num_classes() == 2
    assert [data[i][1] for i in range(6)] == [0, 0, 0, 1, 1, 1]
    x, _ = data[4]
    assert x.shape == (3, 16, 16)
    assert torch.allclose(x, torch.full_like(x, (150 // 2 - 1) / 255))
    noise = data.corrupted("gaussian_noise", 3)
    assert float(noise[0][0].mean()) == pytest.approx(60 / 255)
    assert data.clean() is None


def test_imagenet_c_files_are_not_resized_twice(tmp_path: Path) -> None:
    write_tree(tmp_path)
    same = ImageNetC(root=str(tmp_path), image_size=16, corruption="fog").load(
        {"input_size": (3, 16, 16), "crop_pct": 0.875})
    assert same[0][0].shape == (3, 16, 16)
    bigger = ImageNetC(root=str(tmp_path), image_size=16, corruption="fog").load(
        {"input_size": (3, 32, 32), "interpolation": "bicubic", "crop_pct": 0.875})
    assert bigger[0][0].shape == (3, 32, 32)  # one resize to the input size, no crop
    # without a data config the files are taken at their native size: no resize at all
    native = precomputed_transform(None, 224)(Image.new("RGB", (224, 224), (255, 0, 0)))
    assert native.shape == (3, 224, 224) and torch.equal(native[0], torch.ones(224, 224))


def test_imagenet_c_errors(tmp_path: Path) -> None:
    write_tree(tmp_path)
    with pytest.raises(ParamError) as info:
        validate_params(ImageNetC, {"root": str(tmp_path), "corruption": "fgo"})
    assert info.value.field == "corruption" and "did you mean 'fog'" in str(info.value)
    with pytest.raises(DataError, match="no such folder"):
        ImageNetC(root=str(tmp_path), corruption="snow").load(None)
    data = ImageNetC(root=str(tmp_path), corruption="fog", image_size=16).load(None)
    next((tmp_path / "fog" / "3" / "n01443537").glob("*.png")).unlink()
    with pytest.raises(DataError, match="1 of 6 images missing"):
        data.corrupted("fog", 3)


class Brightness(nn.Module):
    """Class 0 for bright images, 1 for dark ones (threshold on the mean pixel)."""

    def __init__(self, threshold: float):
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dark = (x.mean((1, 2, 3)) < self.threshold).float()
        return torch.stack([1 - dark, dark], 1)


def test_scenario_reads_imagenet_c_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tree(tmp_path)

    def no_generation(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("ImageNet-C files must be read, not generated")

    monkeypatch.setattr(corrupted, "corrupt_images", no_generation)
    source = ImageNetC(root=str(tmp_path), corruption="fog", image_size=16,
                       clean_root=str(tmp_path / "clean"))
    data = source.load({"input_size": (3, 16, 16)})
    loader = DataLoader(Subset(Subset(data, [0, 1, 3, 4, 5]), [0, 2, 3, 4]), batch_size=2)
    ctx = CellContext(model=Brightness(threshold=140 / 255), loader=loader,
                      device=torch.device("cpu"), seed=0, num_classes=2)
    rows = CorruptionScenario(names=["fog", "gaussian_noise"], severity=3).run(ctx)
    got = {(m.scenario_name, m.metric): (m.value, m.n, m.extra) for m in rows}
    alexnet = {"baseline": "published:alexnet"}
    # clean: 250 vs 125 -> all right; fog 3: 150 vs 75 -> all right; noise 3: 60 vs 30 -> class 1
    assert got[(None, "accuracy")] == (1.0, 4, alexnet)
    assert got[("fog", "corruption_accuracy")] == (1.0, 4, alexnet)
    assert got[("gaussian_noise", "corruption_accuracy")] == (0.75, 4, alexnet)
    named = CorruptionScenario(names=["fog"], severity=1, baseline="vit").run(ctx)
    assert all(m.extra == {} for m in named)  # the suite's own baseline is kept as given


CHUNKED = """\
suite: corr_chunks
device: cpu
data: {dataset: digits, split: test, image_size: 32, n_examples: 30, batch_size: 10}
models:
  - name: vit
    source: zoo:digits_vit
scenarios:
  - {kind: corruption, names: [gaussian_noise, impulse_noise, spatter], severity: 3}
"""


def test_a_chunk_of_a_slice_is_the_same_part_of_its_corrupted_copy(cache: Path) -> None:
    images = corrupted.to_uint8(Digits(split="test").load().tensors[0][:30])
    names = ["gaussian_noise", "impulse_noise"]
    whole = corrupted.cached_corruptions(images, names, 3, seed=0)
    part = corrupted.cached_corruptions(images[10:20], names, 3, seed=0, start=10)
    for name in names:
        np.testing.assert_array_equal(part[name], whole[name][10:20])
    # without the offset the chunk would be seeded as images 0..9: different noise
    unaligned = corrupted.cached_corruptions(images[10:20], names, 3, seed=0)
    assert not np.array_equal(unaligned["gaussian_noise"], whole["gaussian_noise"][10:20])


@pytest.mark.parametrize("use_cache", [True, False])
def test_chunked_corruption_cells_merge_into_the_whole_cells_rows(
        tmp_path: Path, cache: Path, use_cache: bool) -> None:
    from robustbench_vit.execution.chunks import chunk_spans, merge_chunks

    path = tmp_path / "suite.yaml"
    cache_flag = f"severity: 3, cache: {str(use_cache).lower()}}}"
    path.write_text(CHUNKED.replace("severity: 3}", cache_flag))
    [cell] = load_suite(path).cells()
    spans = chunk_spans(cell, 10)
    assert spans == [(0, 10), (10, 20), (20, 30)]
    whole = evaluate_cell(cell)
    parts = [evaluate_cell(cell, span=span) for span in spans]
    assert all(p.status == "ok" and p.partial is not None for p in parts)
    merged = merge_chunks(cell, parts)
    assert merged.measurements == whole.measurements
    assert len(whole.measurements) == 4  # clean accuracy + 3 corruptions


def test_execution_fields_stay_out_of_the_cell_key_and_stored_params(tmp_path: Path) -> None:
    keys, params = set(), set()
    for options in ("", ", workers: 2", ", cache: false", ", workers: 1, cache: false"):
        path = tmp_path / "suite.yaml"
        path.write_text(CHUNKED.replace("severity: 3}", f"severity: 3{options}}}"))
        [cell] = load_suite(path).cells()
        keys.add(cell.key)
        params.add(canonical_json(cell.row_params))
        assert "workers" not in cell.row_params and "cache" not in cell.row_params
    assert len(keys) == 1 and len(params) == 1
    assert cell.scenario_options == {"workers": 1, "cache": False}  # still reaches the scenario
    from robustbench_vit.execution.evaluate import build_scenario

    scenario = build_scenario(cell)
    assert (scenario.workers, scenario.cache) == (1, False)


def test_sweeping_an_execution_field_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "suite.yaml"
    path.write_text(CHUNKED.replace("severity: 3}", "severity: 3, sweep: {workers: [1, 2]}}"))
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    assert any(field == "scenarios[0].sweep.workers" and "not their numbers" in msg
               for field, msg in info.value.problems), info.value.problems
