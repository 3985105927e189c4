"""Compiled corruption kernels: the same bytes as imagecorruptions 1.1.2, or not used at all.

Every corruption (kernel or not) at every severity on a 224-px and a 32-px image is compared with
the reference run through the same compatibility layer (`reference=True`), for the same seed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pytest

from robustbench_vit.data import corruption_kernels as kernels
from robustbench_vit.data import corruptions as rc
from robustbench_vit.data.corruptions import ALL, SEVERITIES, corrupt_image

pytestmark = pytest.mark.skipif(not kernels.HAVE_NUMBA, reason="numba is not installed")


def photo(size: int, seed: int = 0) -> np.ndarray:
    """A natural-ish test image: smooth colour fields, hard edges and fine noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    base = np.stack([0.2 + 0.6 * yy, 0.3 + 0.5 * np.sin(3 * xx) ** 2, 0.5 + 0.4 * xx * yy], -1)
    base[(xx - 0.4) ** 2 + (yy - 0.5) ** 2 < 0.05] = [0.95, 0.9, 0.1]
    base[(xx > 0.65) & (yy < 0.3)] = [0.0, 0.05, 0.2]  # saturated dark block: hsv ties
    image = base + rng.normal(0, 0.04, base.shape)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8)


IMAGES = {224: photo(224), 32: photo(32, seed=1)}


@pytest.mark.parametrize("size", sorted(IMAGES))
@pytest.mark.parametrize("name", ALL)
def test_output_equals_imagecorruptions_byte_for_byte(name: str, size: int) -> None:
    image = IMAGES[size]
    for severity in SEVERITIES:
        ours = corrupt_image(image, name, severity, seed=1000 + severity)
        reference = corrupt_image(image, name, severity, seed=1000 + severity, reference=True)
        assert ours.dtype == reference.dtype == np.uint8
        np.testing.assert_array_equal(ours, reference, err_msg=f"{name} severity {severity}")


@pytest.mark.parametrize("name", sorted(kernels.KERNELS))
def test_every_kernel_passes_its_first_use_check(name: str) -> None:
    """The speed is not silently lost: with this machine's libraries every kernel is in use."""
    assert rc.checked_kernel(name) is kernels.KERNELS[name]


@pytest.mark.parametrize("name", sorted(kernels.KERNELS))
def test_kernel_matches_reference_before_the_uint8_cast(name: str) -> None:
    """Stronger than equal bytes: the float arrays are identical (odd size, another seed)."""
    from PIL import Image

    module = rc.load_imagecorruptions()
    image = photo(45)[:, :37]
    for severity in SEVERITIES:
        with rc.global_numpy_seed(severity + 77):
            ours = kernels.KERNELS[name](module, np.ascontiguousarray(image), severity)
            state = np.random.get_state()[1].copy()
        with rc.global_numpy_seed(severity + 77):
            reference = np.asarray(getattr(module, name)(Image.fromarray(image), severity))
            # the kernel consumed exactly the reference's random numbers
            np.testing.assert_array_equal(np.random.get_state()[1], state)
        assert ours.dtype == reference.dtype
        np.testing.assert_array_equal(ours, reference)


@pytest.fixture
def fresh_checks() -> Iterator[None]:
    rc.checked_kernel.cache_clear()
    yield
    rc.checked_kernel.cache_clear()


def test_a_kernel_that_differs_is_not_used(monkeypatch: pytest.MonkeyPatch,
                                           caplog: pytest.LogCaptureFixture,
                                           fresh_checks: None) -> None:
    """A library change that moves the reference's pixels turns the kernel off, not the numbers."""
    original = kernels.KERNELS["glass_blur"]

    def off_by_one(module: object, image: np.ndarray, severity: int) -> np.ndarray:
        return original(module, image, severity) + 1  # type: ignore[arg-type]

    monkeypatch.setitem(kernels.KERNELS, "glass_blur", off_by_one)
    image = IMAGES[32]
    with caplog.at_level(logging.WARNING, logger=rc.__name__):
        ours = corrupt_image(image, "glass_blur", 2, seed=3)
    assert rc.checked_kernel("glass_blur") is None
    assert "glass_blur differs from imagecorruptions" in caplog.text
    np.testing.assert_array_equal(ours, corrupt_image(image, "glass_blur", 2, 3, reference=True))


def test_small_images_run_the_reference(monkeypatch: pytest.MonkeyPatch,
                                        fresh_checks: None) -> None:
    def boom(*args: object) -> np.ndarray:
        raise AssertionError("kernel used on a tiny image")

    monkeypatch.setitem(kernels.KERNELS, "zoom_blur", boom)
    tiny = IMAGES[32][: rc.MIN_KERNEL_SIDE - 1]
    out = corrupt_image(tiny, "zoom_blur", 3, seed=0)
    assert out.shape == tiny.shape


def test_glass_blur_copies_rather_than_swaps() -> None:
    """The reference's tuple 'swap' through numpy views copies: the kernel must not fix it."""
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    offsets = np.array([[-1, 0]] * 12)  # dx=-1, dy=0 for every pixel visited
    kernels._copy_from_offsets(image, offsets, 1, 1)
    # row 2, visited right to left: each pixel takes its left neighbour's (unmodified) value
    expected = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    for h in range(3, 1, -1):
        for w in range(5, 1, -1):
            expected[h, w] = expected[h, w - 1]
    np.testing.assert_array_equal(image, expected)
