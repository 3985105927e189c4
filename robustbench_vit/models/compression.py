"""Compressed copies of a model: int8 dynamic quantization and global magnitude pruning.

Each compression gives two models: `target`, what is deployed and evaluated, and `surrogate`, a
differentiable stand-in to craft white-box attacks on (int8 is attacked through weight and
activation fake-quantization with a straight-through gradient; a pruned model is its own surrogate).
int8 keeps float the Linear layers whose weight their module's forward reads itself (found by
reading the forward's source), and the surrogate fake-quantizes exactly the layers the target
quantizes.
"""

from __future__ import annotations

import copy
import inspect
import logging
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import UnsupportedModel
from ..core.registry import Registry

log = logging.getLogger(__name__)


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


_SELF_CALL = re.compile(r"\bself\.(\w+)\(")


def _method_sources(cls: type, name: str) -> list[str]:
    """Source of every definition of method `name` along the MRO of `cls` (super() calls reach
    them); definitions without Python source are skipped."""
    out = []
    for klass in cls.__mro__:
        func = klass.__dict__.get(name)
        if inspect.isfunction(func):
            try:
                out.append(inspect.getsource(func))
            except (OSError, TypeError):
                continue
    return out


_FORWARD_SOURCES: dict[type, str] = {}


def forward_source(cls: type) -> str:
    """The source a forward of `cls` runs: `forward` and, transitively, the methods it calls on
    `self` (e.g. ConViT's GPSA.forward -> get_rel_indices), along the MRO (cached per class)."""
    if cls not in _FORWARD_SOURCES:
        _FORWARD_SOURCES[cls] = _reachable_source(cls)
    return _FORWARD_SOURCES[cls]


def _reachable_source(cls: type) -> str:
    """Source of `forward` and of every method it reaches through `self.<method>(` calls."""
    seen: set[str] = set()
    pending, sources = ["forward"], []
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        for text in _method_sources(cls, name):
            sources.append(text)
            pending.extend(m for m in _SELF_CALL.findall(text)
                           if m not in seen and inspect.isfunction(getattr(cls, m, None)))
    return "\n".join(sources)


def _reads_parameters(owner: nn.Module, relative: str) -> bool:
    """Whether the forward of `owner` reads `self.<relative>.weight` or `.bias` itself."""
    pattern = rf"\bself\.{re.escape(relative)}\.(weight|bias)\b"
    return re.search(pattern, forward_source(type(owner))) is not None


def linears_read_directly(model: nn.Module) -> set[str]:
    """Names of the Linear layers whose weight or bias an enclosing module's forward reads
    directly (BEiT, EVA and Swin-V2 attention: `F.linear(x, self.qkv.weight, qkv_bias)`): a
    dynamically quantized Linear has no weight tensor there, and fake-quantizing only its call
    would miss that use."""
    modules = dict(model.named_modules())
    found = set()
    for name, module in modules.items():
        if not isinstance(module, nn.Linear) or not name:
            continue
        parts = name.split(".")
        for cut in range(len(parts)):  # every enclosing module, the model itself included
            owner = modules[".".join(parts[:cut])]
            if _reads_parameters(owner, ".".join(parts[cut:])):
                found.add(name)
                break
    return found


def _replace_linears(model: nn.Module, names: Iterable[str],
                     make: Callable[[nn.Linear], nn.Module]) -> nn.Module:
    """Replace the Linear layers `names` of `model` (in place) by `make(layer)`."""
    for name in names:
        parent, _, attr = name.rpartition(".")
        layer = model.get_submodule(name)
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"{name} is a {type(layer).__name__}, not a Linear")
        setattr(model.get_submodule(parent), attr, make(layer))
    return model


def _quantized_names(model: nn.Module) -> set[str]:
    """Names of the dynamically quantized Linear layers of `model`."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    return {name for name, m in model.named_modules() if isinstance(m, DynamicLinear)}


@COMPRESSIONS.register("int8")
def int8_dynamic(model: nn.Module, _amount: int | None = None) -> Compressed:
    """Post-training dynamic int8 quantization (CPU) of every Linear except those whose weight a
    module's forward reads directly (kept float), and a fake-quant surrogate of exactly the same
    layers."""
    cpu = copy.deepcopy(model).cpu().eval()
    linears = [name for name, m in cpu.named_modules() if isinstance(m, nn.Linear) and name]
    direct = linears_read_directly(cpu)
    qconfig = torch.ao.quantization.default_dynamic_qconfig
    spec = {name: qconfig for name in linears if name not in direct}
    with warnings.catch_warnings():  # torch marks its quantized tensors deprecated; still supported
        warnings.simplefilter("ignore", UserWarning)
        target = torch.ao.quantization.quantize_dynamic(cpu, spec, dtype=torch.qint8)
    quantized = _quantized_names(target)
    if not quantized:
        raise UnsupportedModel(
            f"int8: {type(model).__name__} has no Linear layer that dynamic quantization can "
            f"replace ({len(linears)} Linear layers, {len(direct)} read directly by their module)")
    log.debug("int8: %d of %d Linear layers quantized, %d kept float (%d read directly)",
              len(quantized), len(linears), len(linears) - len(quantized), len(direct))
    device = next(model.parameters()).device
    surrogate = _replace_linears(copy.deepcopy(model).eval(), sorted(quantized),
                                 FakeQuantLinear).to(device)
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
