"""Compressed copies of a model: int8 dynamic quantization and global magnitude pruning.

Each compression gives two models: `target`, what is deployed and evaluated, and `surrogate`, a
differentiable stand-in to craft white-box attacks on (int8 is attacked through weight and
activation fake-quantization with a straight-through gradient; a pruned model is its own surrogate).
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..core.registry import Registry


@dataclass(frozen=True, kw_only=True)
class Compressed:
    """A compressed model to evaluate, its differentiable surrogate, and the device it runs on."""

    target: nn.Module
    surrogate: nn.Module
    device: torch.device


COMPRESSIONS: Registry[Callable[[nn.Module, int | None], Compressed]] = Registry("compression")


def parse_target(name: str) -> tuple[str, int | None]:
    """"prune50" -> ("prune", 50); "int8" -> ("int8", None)."""
    if name in COMPRESSIONS:
        return name, None
    match = re.fullmatch(r"([a-z_]+?)(\d+)", name)
    if match and match.group(1) in COMPRESSIONS:
        return match.group(1), int(match.group(2))
    return name, None


def compress(model: nn.Module, name: str) -> Compressed:
    """The compression `name` ("int8", "prune30", ...) of `model` (a deep copy; `model` is
    unchanged)."""
    kind, amount = parse_target(name)
    return COMPRESSIONS.get(kind)(model, amount)


def fake_quant_ste(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int,
                   qmax: int) -> torch.Tensor:
    """Quantize-dequantize in the forward pass, identity gradient (straight-through estimator)."""
    q = (torch.round(x / scale) + zero).clamp(qmin, qmax)
    return x + ((q - zero) * scale - x).detach()


class FakeQuantLinear(nn.Module):
    """A Linear computing like dynamic int8 quantization: int8 weights, per-batch uint8
    activations."""

    weight: torch.Tensor  # a buffer, registered in __init__

    def __init__(self, linear: nn.Linear):
        super().__init__()
        weight = linear.weight.detach()
        scale = weight.abs().max().clamp_min(1e-12) / 127.0
        self.register_buffer("weight", torch.round(weight / scale).clamp(-128, 127) * scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = x.detach().min().clamp(max=0), x.detach().max().clamp(min=0)
        scale = ((hi - lo) / 255.0).clamp_min(1e-12)
        zero = torch.round(-lo / scale)
        return nn.functional.linear(fake_quant_ste(x, scale, zero, 0, 255), self.weight, self.bias)


def _replace_linears(model: nn.Module, make: Callable[[nn.Linear], nn.Module]) -> nn.Module:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, make(child))
    return model


@COMPRESSIONS.register("int8")
def int8_dynamic(model: nn.Module, _amount: int | None = None) -> Compressed:
    """Post-training dynamic int8 quantization of every Linear (CPU), fake-quant surrogate."""
    cpu = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():  # torch marks its quantized tensors deprecated; still supported
        warnings.simplefilter("ignore", UserWarning)
        target = torch.ao.quantization.quantize_dynamic(cpu, {nn.Linear}, dtype=torch.qint8)
    device = next(model.parameters()).device
    surrogate = _replace_linears(copy.deepcopy(model).eval(), FakeQuantLinear).to(device)
    return Compressed(target=target, surrogate=surrogate, device=torch.device("cpu"))


@COMPRESSIONS.register("prune")
def magnitude_prune(model: nn.Module, amount: int | None = None) -> Compressed:
    """Global magnitude pruning: zero the smallest `amount`% of all Linear weights (by |w|)."""
    if amount is None or not 0 < amount < 100:
        raise ValueError(f"pruning needs a percentage in 1..99 (e.g. prune50), got {amount}")
    pruned = copy.deepcopy(model).eval()
    linears = [m for m in pruned.modules() if isinstance(m, nn.Linear)]
    magnitudes = torch.cat([m.weight.detach().abs().flatten() for m in linears])
    k = int(len(magnitudes) * amount / 100)
    threshold = magnitudes.kthvalue(k).values if k > 0 else magnitudes.min() - 1
    with torch.no_grad():
        for m in linears:
            m.weight.mul_((m.weight.abs() > threshold).float())
    device = next(model.parameters()).device
    return Compressed(target=pruned, surrogate=pruned, device=device)
