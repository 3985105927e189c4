"""`fourier`: top-1 error under additive Fourier basis perturbations, one frequency at a time.

The Fourier heat map of Yin et al. 2019 ("A Fourier Perspective on Model Robustness"): for each
basis image U_{i,j} (`basis.basis_images`: real, unit L2 norm), every image becomes
x' = clip(x + r · eps · U_{i,j}, 0, 1), with r ∈ {-1, +1} drawn per image and per channel, so each
channel's perturbation has L2 norm `eps` (before clipping), in pixel space before the model's
normalization. Yin et al. use eps = 4 on 32-px CIFAR-10 and 15.7 on 224-px ImageNet (the default, 4,
suits 32 px; scale it with the image side). The signs come from a generator seeded by (cell seed,
batch index in the cell), the same for every model at the same seed.

Frequencies (centered, (0, 0) = DC): every one on the grid, or with `max_frequency` those with
|i|, |j| ≤ it, and with `stride` s only multiples of s on each axis (s = 8 at 224 px evaluates 28 x
28 frequencies instead of 224 x 224). U_{i,j} = U_{-i,-j}, so only one of each conjugate pair is
evaluated and the other's row is a copy of it.

Rows: `fourier_error` per frequency, params {"freq_y": i, "freq_x": j} (detail params: the HTML page
draws them as a heatmap per model/defense), over the images; `fourier_error_low` and
`fourier_error_high`: the error over every (image, evaluated frequency) pair of the low band
(radius ≤ 1/4 of Nyquist, DC included) and of the high band (radius ≥ 3/4 of Nyquist), see
`basis`; left out when the evaluated grid has no frequency in the band. Their n is the number of
images and their Wilson interval counts images, not pairs (one image's errors correlate across
frequencies; for a mean of values in [0, 1] this interval is conservative).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field

from ...core.metrics import Measurement, proportion, register_metric, wilson_interval
from ...core.registry import SCENARIOS
from ..base import CellContext, Scenario, chunked_predictions
from ..shift import scenario_seed
from .basis import Freq, Size, axis_frequencies, band, basis_images, representative

BANDS = ("low", "high")

register_metric("fourier_error", higher_is_better=False,
                description="Top-1 error under the Fourier basis perturbation of one frequency "
                            "(freq_y, freq_x), x + r·eps·U with r = ±1 per image and channel")
register_metric("fourier_error_low", higher_is_better=False, headline=True,
                description="Top-1 error under low-frequency Fourier basis perturbations: radius "
                            "sqrt((i/(H/2))² + (j/(W/2))²) ≤ 1/4 of Nyquist, DC included")
register_metric("fourier_error_high", higher_is_better=False, headline=True,
                description="Top-1 error under high-frequency Fourier basis perturbations: radius "
                            "sqrt((i/(H/2))² + (j/(W/2))²) ≥ 3/4 of Nyquist")


@SCENARIOS.register("fourier")
@dataclass(frozen=True, kw_only=True)
class FourierScenario(Scenario):
    """Error under additive Fourier basis perturbations per frequency (Yin et al. heat map)."""

    kind: ClassVar[str] = "fourier"
    detail_params: ClassVar[frozenset[str]] = frozenset({"freq_y", "freq_x"})
    chunkable: ClassVar[bool] = True
    eps: Annotated[float, Field(ge=0)] = 4.0
    max_frequency: Annotated[int, Field(ge=0)] | None = None
    stride: Annotated[int, Field(ge=1)] = 1

    def grid(self, size: Size) -> list[Freq]:
        """Every frequency (i, j) that gets a row, row-major."""
        return [(i, j) for i in axis_frequencies(size[0], self.stride, self.max_frequency)
                for j in axis_frequencies(size[1], self.stride, self.max_frequency)]

    def evaluated(self, size: Size) -> list[Freq]:
        """One frequency of each conjugate pair of the grid (those that are run)."""
        return [f for f in self.grid(size) if representative(f, size) == f]

    def run(self, ctx: CellContext) -> list[Measurement]:
        return self.merge([self.partial(ctx)])

    @torch.no_grad()
    def partial(self, ctx: CellContext) -> dict[str, Any]:
        """Error counts per evaluated frequency, the image count and the image size."""
        size: Size | None = None
        errors = torch.zeros(0, dtype=torch.long)
        n = 0
        for b, (x, y) in enumerate(ctx.batches()):
            size = (x.shape[2], x.shape[3])
            wrong = self.batch_errors(ctx, x, y, ctx.first_batch + b, self.evaluated(size))
            errors = wrong if n == 0 else errors + wrong
            n += len(y)
        return {"size": size, "errors": errors, "n": n}

    def batch_errors(self, ctx: CellContext, x: torch.Tensor, y: torch.Tensor, batch_index: int,
                     freqs: list[Freq]) -> torch.Tensor:
        """(frequencies,) int64: misclassified images of the batch under each frequency."""
        size, (batch, channels) = (x.shape[2], x.shape[3]), x.shape[:2]
        gen = torch.Generator().manual_seed(scenario_seed(ctx.seed, "fourier", batch_index))
        signs = torch.randint(0, 2, (len(freqs), batch, channels), generator=gen,
                              dtype=torch.int8).to(x.device) * 2 - 1
        table = torch.tensor(freqs, dtype=torch.long).reshape(-1, 2)

        def build(start: int, stop: int) -> torch.Tensor:  # copy t: frequency t // B, image t % B
            t = torch.arange(start, stop, device=x.device)
            f, i = t // batch, t % batch
            used, where = f.unique(return_inverse=True)
            u = basis_images(table[used.cpu()], size, x.device)[where]
            delta = self.eps * signs[f, i].to(x.dtype)[:, :, None, None] * u[:, None]
            return (x[i] + delta).clamp(0, 1)

        preds = chunked_predictions(ctx, len(freqs) * batch, size[0] * size[1], build)
        return (preds.view(len(freqs), batch) != y.cpu()).sum(1)

    def merge(self, parts: list[dict[str, Any]]) -> list[Measurement]:
        sizes = [p["size"] for p in parts if p["size"] is not None]
        if not sizes:
            return []
        size = sizes[0]
        n = sum(p["n"] for p in parts)
        counts = sum(p["errors"] for p in parts if p["n"])
        measured = dict(zip(self.evaluated(size), counts.tolist(), strict=True))
        rows = [proportion("fourier_error", measured[representative(f, size)], n,
                           freq_y=f[0], freq_x=f[1]) for f in self.grid(size)]
        for name in BANDS:
            members = [f for f in measured if band(f, size) == name]
            if members and n:
                # the band's error is each image's mean error over the band's frequencies,
                # averaged over the n images: its interval counts images, not (image,
                # frequency) pairs (errors of one image correlate across frequencies); Wilson on
                # a mean of values in [0, 1] over n images is conservative
                wrong = sum(measured[f] for f in members) / len(members)
                low, high = wilson_interval(wrong, n)
                rows.append(Measurement(metric=f"fourier_error_{name}", value=wrong / n, n=n,
                                        ci_low=low, ci_high=high))
        return rows
