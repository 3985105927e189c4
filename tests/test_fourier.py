"""The `fourier` scenario (Yin et al. heat map): basis images, bands, errors, chunks, its SVG."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pydantic
import pytest
import torch
import torch.nn.functional as F
from probe_context import context, first_test_digits
from torch import nn

from robustbench_vit.core.metrics import Measurement
from robustbench_vit.report.svg import grid_chart, grid_ticks
from robustbench_vit.scenarios.clean import CleanScenario
from robustbench_vit.scenarios.fourier.basis import (
    axis_frequencies,
    band,
    basis_images,
    partner,
    representative,
)
from robustbench_vit.scenarios.fourier.scenario import FourierScenario


@pytest.fixture(scope="module")
def digits_100() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 100 test-split digits."""
    return first_test_digits(100)


def per_frequency(rows: list[Measurement]) -> dict[tuple[int, int], float]:
    return {(m.extra["freq_y"], m.extra["freq_x"]): m.value for m in rows
            if m.metric == "fourier_error"}


def summary(rows: list[Measurement]) -> dict[str, float]:
    return {m.metric: m.value for m in rows if m.metric != "fourier_error"}


class GaussianBlur(nn.Module):
    """A strong low-pass filter (Gaussian, sigma 1.5 px, reflected edges) before `model`."""

    def __init__(self, model: nn.Module, sigma: float = 1.5) -> None:
        super().__init__()
        self.model = model
        self.radius = int(3 * sigma) + 1
        taps = torch.arange(-self.radius, self.radius + 1, dtype=torch.float32)
        kernel = torch.exp(-taps ** 2 / (2 * sigma ** 2))
        self.register_buffer("kernel", kernel / kernel.sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        x = F.pad(x, (self.radius,) * 4, mode="reflect")
        x = F.conv2d(x, self.kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        x = F.conv2d(x, self.kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
        return self.model(x)


# --- basis and bands ------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(8, 8), (6, 10), (7, 5)])
def test_basis_images_are_real_unit_norm_inverse_ffts_of_a_conjugate_pair(size: tuple) -> None:
    grid = [(i, j) for i in axis_frequencies(size[0]) for j in axis_frequencies(size[1])]
    assert len(grid) == size[0] * size[1]
    u = basis_images(torch.tensor(grid), size)
    assert u.dtype == torch.float32 and u.shape == (len(grid), *size)
    assert torch.allclose(u.flatten(1).norm(dim=1), torch.ones(len(grid)), atol=1e-5)
    for (i, j), image in zip(grid, u, strict=True):
        hot = torch.zeros(size, dtype=torch.complex128)
        hot[i % size[0], j % size[1]] = 1
        hot[-i % size[0], -j % size[1]] = 1
        inverse = torch.fft.ifft2(hot)
        assert inverse.imag.abs().max() < 1e-12  # the pair's inverse DFT is real
        expected = inverse.real / inverse.real.norm()
        assert torch.allclose(image.double(), expected, atol=1e-6)
        support = torch.fft.fft2(image.double()).abs() > 1e-6
        assert {(a, b) for a, b in support.nonzero().tolist()} == \
            {(i % size[0], j % size[1]), (-i % size[0], -j % size[1])}


def test_conjugate_symmetry() -> None:
    size = (8, 8)
    grid = [(i, j) for i in axis_frequencies(8) for j in axis_frequencies(8)]
    for f in grid:
        mate = partner(f, size)
        assert mate in grid and partner(mate, size) == f
        assert representative(f, size) == representative(mate, size)
        pair = basis_images(torch.tensor([f, mate]), size)
        assert torch.allclose(pair[0], pair[1], atol=1e-6)
    self_paired = [f for f in grid if partner(f, size) == f]
    assert sorted(self_paired) == [(-4, -4), (-4, 0), (0, -4), (0, 0)]
    evaluated = FourierScenario().evaluated(size)
    assert len(evaluated) == (64 + 4) // 2 and len(set(evaluated)) == len(evaluated)


def test_frequency_grid_stride_and_limit() -> None:
    assert axis_frequencies(32, stride=8) == [-16, -8, 0, 8]
    assert axis_frequencies(32, stride=3, max_frequency=7) == [-6, -3, 0, 3, 6]
    assert len(FourierScenario(max_frequency=2).grid((32, 32))) == 25
    assert len(FourierScenario(stride=4).grid((32, 32))) == 64


def test_bands() -> None:
    size = (32, 32)  # Nyquist 16: low is i² + j² <= 16, high is i² + j² >= 144
    assert band((0, 0), size) == band((4, 0), size) == band((0, -4), size) == "low"
    assert band((3, 3), size) is None and band((8, 8), size) is None
    assert band((12, 0), size) == band((-8, 9), size) == band((-16, -16), size) == "high"
    assert band((11, 5), size) == "high" and band((11, 4), size) is None  # 146 and 137


# --- the scenario ---------------------------------------------------------------------------------

def test_eps_zero_gives_the_clean_error_at_every_frequency(digits_model: nn.Module,
                                                           digits_100: tuple) -> None:
    rows = FourierScenario(eps=0.0, stride=8).run(context(digits_model, digits_100))
    (clean, *_) = CleanScenario().run(context(digits_model, digits_100))
    errors = per_frequency(rows)
    assert len(errors) == 16 and all(m.n == 100 for m in rows if m.metric == "fourier_error")
    wrong = round((1 - clean.value) * 100)
    assert wrong > 0 and {round(e * 100) for e in errors.values()} == {wrong}
    assert all(e == pytest.approx(wrong / 100, abs=1e-12) for e in errors.values())
    assert summary(rows) == {"fourier_error_low": pytest.approx(wrong / 100),
                             "fourier_error_high": pytest.approx(wrong / 100)}
    # a band's interval counts the 100 images, not the (image, frequency) pairs
    from robustbench_vit.core.metrics import wilson_interval

    for band_row in (m for m in rows if m.metric.startswith("fourier_error_")):
        assert band_row.n == 100
        assert (band_row.ci_low, band_row.ci_high) == pytest.approx(wilson_interval(wrong, 100))


def test_a_low_pass_model_ignores_high_frequencies_and_the_vit_does_not(
        digits_model: nn.Module, digits_100: tuple) -> None:
    scenario = FourierScenario(stride=4)  # eps 4: Yin et al.'s 32-px setting
    blurred = GaussianBlur(digits_model).eval()
    data = (digits_100[0][:60], digits_100[1][:60])
    smooth = scenario.run(context(blurred, data, batch_size=60))
    vit = scenario.run(context(digits_model, data, batch_size=60))
    clean = CleanScenario().run(context(blurred, data))[0].value
    assert clean >= 0.95  # the blur keeps the digits
    assert summary(smooth)["fourier_error_high"] <= 0.05
    high = [e for f, e in per_frequency(smooth).items() if band(f, (32, 32)) == "high"]
    assert len(high) > 20 and max(high) <= 1 - clean + 0.03
    assert max(per_frequency(vit).values()) >= 0.2
    assert summary(vit)["fourier_error_high"] > summary(smooth)["fourier_error_high"]


def test_partner_rows_are_copies_and_rows_are_deterministic(digits_model: nn.Module,
                                                            digits_100: tuple) -> None:
    scenario = FourierScenario(stride=8, eps=8.0)
    rows = scenario.run(context(digits_model, digits_100, seed=1))
    errors = per_frequency(rows)
    for f, value in errors.items():
        assert errors[partner(f, (32, 32))] == value
    assert scenario.run(context(digits_model, digits_100, seed=1)) == rows
    assert per_frequency(scenario.run(context(digits_model, digits_100, seed=2))) != errors
    assert [m.metric for m in rows[-2:]] == ["fourier_error_low", "fourier_error_high"]
    low = [f for f in scenario.evaluated((32, 32)) if band(f, (32, 32)) == "low"]
    assert low == [(0, 0)] and rows[-2].n == 100


def test_chunks_merge_into_the_whole_cell(digits_model: nn.Module, digits_100: tuple) -> None:
    scenario = FourierScenario(stride=8)
    whole = scenario.run(context(digits_model, digits_100))
    halves = [(digits_100[0][:50], digits_100[1][:50]), (digits_100[0][50:], digits_100[1][50:])]
    parts = [scenario.partial(context(digits_model, half, first_batch=i))
             for i, half in enumerate(halves)]
    assert scenario.merge(parts) == whole


@pytest.mark.parametrize("params", [{"eps": -1}, {"stride": 0}, {"max_frequency": -1},
                                    {"frequency": 3}])
def test_fourier_rejects_bad_params(params: dict) -> None:
    with pytest.raises(pydantic.ValidationError):
        FourierScenario.from_params(params)


# --- the dense heatmap ----------------------------------------------------------------------------

def test_grid_chart_draws_every_cell_with_escaped_tooltips() -> None:
    xs, ys = ["-2", "-1", "0", "1"], ["-1", "0", "1"]
    cells = [[{"x": x, "x_text": x, "y": (i + j) / 5, "low": 0.0, "high": 1.0, "n": 10}
              for j, x in enumerate(xs)] for i in range(3)]
    cells[1][2] = None
    plot = {"kind": "grid", "title": "<m> & d", "subtitle": "", "x_label": "j", "y_label": "i",
            "percent": True, "x": xs, "y": ys, "cells": cells}
    svg = grid_chart(plot)
    root = ET.fromstring(svg)  # well-formed: every text escaped
    rects = [r for r in root.iter("rect") if r.get("class") == "grid-cell"]
    assert len(rects) == 12
    titles = [r.find("title").text for r in rects]  # type: ignore[union-attr]
    assert titles[6] == "i 0 · j 0: no result" and rects[6].get("fill") == "#eeeeee"
    assert titles[0] == "i -1 · j -2: 0.0% [0.0, 100.0] n=10"
    assert rects[11].get("fill") != rects[0].get("fill")
    assert root.find("title").text == "<m> & d"  # type: ignore[union-attr]
    assert grid_ticks([str(k) for k in range(-16, 16)]) == {i for i in range(32) if i % 4 == 0}


def test_memory_chunks_do_not_change_the_rows(digits_model: nn.Module, digits_100: tuple,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from robustbench_vit.scenarios import base

    scenario = FourierScenario(stride=8)
    data = (digits_100[0][:10], digits_100[1][:10])
    whole = scenario.run(context(digits_model, data, batch_size=10))
    monkeypatch.setattr(base, "CHUNK_PIXELS", 16 * 32 * 32)  # 16 perturbed copies per forward
    assert scenario.run(context(digits_model, data, batch_size=10)) == whole
