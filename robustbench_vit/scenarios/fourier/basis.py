"""Fourier basis images, the frequency grid and the low/high bands of the `fourier` scenario.

Frequencies are centered (fftshift order): an image side of n has frequencies -n//2 .. (n-1)//2
cycles per image, (0, 0) is DC and n/2 (for even n) is the Nyquist frequency. The basis image
U_{i,j} is the real part of the inverse DFT of a one-hot at (i, j), i.e. cos(2π (i y/H + j x/W)),
scaled to unit L2 norm: real, its DFT is supported on (i, j) and its conjugate partner (-i, -j)
only, and U_{i,j} = U_{-i,-j} (so one of each pair is evaluated).

Bands, by the radius of a frequency relative to Nyquist on each axis,
ρ = sqrt((i / (H/2))² + (j / (W/2))²): low is ρ ≤ 1/4 (DC included), high is ρ ≥ 3/4 (the corners,
up to ρ = √2, included). At 32 px: low is i² + j² ≤ 16, high is i² + j² ≥ 144.
"""

from __future__ import annotations

import math

import torch

Freq = tuple[int, int]
Size = tuple[int, int]

LOW_RADIUS = 0.25
HIGH_RADIUS = 0.75
"""Band limits of ρ, the radius relative to Nyquist (see the module docstring)."""


def axis_frequencies(size: int, stride: int = 1, max_frequency: int | None = None) -> list[int]:
    """Centered frequencies of one axis that are multiples of `stride` and within ±max_frequency
    (a set closed under negation, up to the Nyquist frequency, which is its own partner)."""
    return [k for k in range(-(size // 2), (size + 1) // 2)
            if k % stride == 0 and (max_frequency is None or abs(k) <= max_frequency)]


def wrap(k: int, size: int) -> int:
    """Frequency k as a centered frequency of an axis of `size` (k and k ± size are the same)."""
    return (k + size // 2) % size - size // 2


def partner(freq: Freq, size: Size) -> Freq:
    """The conjugate partner (-i, -j) of a frequency, centered."""
    return wrap(-freq[0], size[0]), wrap(-freq[1], size[1])


def representative(freq: Freq, size: Size) -> Freq:
    """The one of a frequency and its partner that is evaluated (the smaller pair)."""
    return min(freq, partner(freq, size))


def radius(freq: Freq, size: Size) -> float:
    """ρ: the frequency's radius relative to the Nyquist frequency of each axis."""
    return math.hypot(freq[0] / (size[0] / 2), freq[1] / (size[1] / 2))


def band(freq: Freq, size: Size) -> str | None:
    """"low" (ρ ≤ 1/4), "high" (ρ ≥ 3/4) or None (in between)."""
    rho = radius(freq, size)
    if rho <= LOW_RADIUS + 1e-12:
        return "low"
    if rho >= HIGH_RADIUS - 1e-12:
        return "high"
    return None


def basis_images(freqs: torch.Tensor, size: Size,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """(k, H, W) float32: the unit-L2 basis images U_{i,j} of the (k, 2) centered frequencies."""
    ys = torch.arange(size[0], device=device, dtype=torch.float64) / size[0]
    xs = torch.arange(size[1], device=device, dtype=torch.float64) / size[1]
    f = freqs.to(device=device, dtype=torch.float64)
    phase = 2 * math.pi * (f[:, 0, None, None] * ys[:, None] + f[:, 1, None, None] * xs)
    u = torch.cos(phase)
    return (u / u.flatten(1).norm(dim=1)[:, None, None]).float()
