"""The procedural `shapes` dataset: deterministic, disjoint splits, balanced, in [0,1]; usable as a
model's own data in a suite and as the task of the zoo's shapes fine-tunes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from robustbench_vit import load_suite
from robustbench_vit.core.errors import SuiteError
from robustbench_vit.core.registry import DATASETS, ZOO
from robustbench_vit.data.shapes import (
    DEFAULT_SIZES,
    SHAPES,
    Shapes,
    draw,
    render,
    shapes_tensors,
)


def tensors(**fields: object) -> tuple[torch.Tensor, torch.Tensor]:
    return Shapes(**{"size": 120, **fields}).load().tensors  # type: ignore[arg-type]


def test_registered_with_six_classes_and_split_sizes() -> None:
    assert DATASETS.get("shapes") is Shapes
    assert Shapes().num_classes() == len(SHAPES) == 6
    assert Shapes(classes=4).num_classes() == 4
    assert [len(Shapes(split=s).load()) for s in ("train", "test", "attacker")] == \
        [DEFAULT_SIZES["train"], DEFAULT_SIZES["test"], DEFAULT_SIZES["attacker"]]


def test_images_are_float_in_unit_range_at_the_image_size() -> None:
    x, y = tensors()
    assert x.shape == (120, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert float(x.std()) > 0.1  # not blank
    assert tensors(image_size=48, size=6)[0].shape == (6, 3, 48, 48)


def test_deterministic_per_seed_and_independent_of_the_cache() -> None:
    x, y = tensors(seed=3)
    shapes_tensors.cache_clear()
    again_x, again_y = tensors(seed=3)
    assert torch.equal(x, again_x) and torch.equal(y, again_y)
    assert not torch.equal(x, tensors(seed=4)[0])


def test_a_smaller_split_is_a_prefix_of_a_larger_one() -> None:
    x, y = tensors(size=120)
    small_x, small_y = tensors(size=30)
    assert torch.equal(small_x, x[:30]) and torch.equal(small_y, y[:30])


def test_load_returns_a_copy_of_the_cached_images() -> None:
    x, _ = tensors(size=12)
    x.zero_()
    assert float(tensors(size=12)[0].max()) > 0


def test_splits_are_disjoint_draws() -> None:
    flat = {s: tensors(split=s)[0].flatten(1) for s in ("train", "test", "attacker")}
    for a, b in (("train", "test"), ("train", "attacker"), ("test", "attacker")):
        distance = torch.cdist(flat[a], flat[b], p=float("inf"))
        assert float(distance.min()) > 0.05, (a, b)


@pytest.mark.parametrize("classes", [6, 4])
def test_every_split_is_balanced(classes: int) -> None:
    for split in ("train", "test", "attacker"):
        _, y = tensors(split=split, classes=classes)
        counts = torch.bincount(y, minlength=classes)
        assert len(counts) == classes and int(counts.max() - counts.min()) == 0, split


def test_the_label_is_the_shape_and_only_the_shape() -> None:
    # one image's random draws rendered as every class: the images differ, and only inside the
    # shape's outer radius (the background does not depend on the label)
    one = draw(np.random.default_rng(7), 32)
    images = render([one] * 6, list(range(6)), 32)
    yy, xx = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="ij")
    outside = (xx - one.centre[0]) ** 2 + (yy - one.centre[1]) ** 2 > (1.1 * one.radius + 1) ** 2
    for a in range(6):
        for b in range(a + 1, 6):
            diff = (images[a] - images[b]).abs().amax(0)
            assert float(diff.max()) > 0.1, (SHAPES[a], SHAPES[b])
            assert float(diff[outside].max()) == 0, (SHAPES[a], SHAPES[b])


SUITE = """
suite: shapes_test
data: {{dataset: digits, split: test, image_size: 32, n_examples: 40, batch_size: 20}}
models:
  - {{name: vit, source: "zoo:digits_vit"}}
  - {{name: shapes, source: "zoo:digits_vit", data: {data}}}
scenarios:
  - {{kind: clean}}
"""


def write_suite(tmp_path: Path, data: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE.format(data=data))
    return path


def test_a_model_may_be_evaluated_on_shapes(tmp_path: Path) -> None:
    suite = load_suite(write_suite(tmp_path, "{dataset: shapes, size: 90}"))
    digits, shapes = (suite.model_data[n] for n in ("vit", "shapes"))
    assert digits.dataset == "digits" and shapes.dataset == "shapes"
    # the suite's fields shapes also has (split, image_size) carry over; digits' own do not
    assert shapes.params == {"split": "test", "size": 90, "image_size": 32, "classes": 6,
                             "seed": 0}
    keys = {c.model.name: c.key for c in suite.cells("cpu")}
    assert keys["vit"] != keys["shapes"]


def test_a_model_dataset_and_its_fields_are_checked(tmp_path: Path) -> None:
    with pytest.raises(SuiteError) as err:
        load_suite(write_suite(tmp_path, "{dataset: shapez}"))
    assert err.value.problems[0][0] == "models[1].data.dataset"
    assert "shapes" in err.value.problems[0][1]
    with pytest.raises(SuiteError) as err:
        load_suite(write_suite(tmp_path, "{dataset: shapes, task: parity}"))
    assert err.value.problems[0][0] == "models[1].data.task"


def test_shapes_recipes_fine_tune_digits_vit_on_six_classes() -> None:
    for name in ("digits_vit_shapes_full", "digits_vit_shapes_linear", "digits_vit_shapes_lora",
                 "digits_vit_shapes_surrogate"):
        recipe = ZOO.get(name)
        assert recipe.base == "digits_vit" and recipe.dataset == "shapes"
        assert recipe.architecture()[1]["num_classes"] == 6
    surrogate, victim = ZOO.get("digits_vit_shapes_surrogate"), ZOO.get("digits_vit_shapes_full")
    assert surrogate.train_split == "attacker" and victim.train_split == "train"
    assert surrogate.seed != victim.seed and surrogate.scheme == "full"


@pytest.mark.slow
@pytest.mark.parametrize("scheme", ["full", "linear", "lora", "surrogate"])
def test_shapes_fine_tunes_reach_their_targets(scheme: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from robustbench_vit.models import zoo
    from robustbench_vit.models.training import accuracy

    monkeypatch.setenv("RBV_CACHE", str(tmp_path))
    name = f"digits_vit_shapes_{scheme}"
    model = zoo.load_zoo_model(name)
    acc = accuracy(model, Shapes(split="test").load(), torch.device("cpu"))
    assert acc >= ZOO.get(name).min_accuracy > 1 / 6
