"""One way to change the logit temperature of any attention module, and to record its maps.

Every attention module the adapters list computes its probabilities with a softmax over explicit
logits or with `F.scaled_dot_product_attention`. `tempered` swaps the module's class for a subclass
whose forward runs the original one under `AttentionMode`, a torch function mode (thread-local)
that, inside that module only, divides every softmax input by T and turns SDPA into
softmax((q·kᵀ·scale + bias) / T)·v (scale / T and an additive float bias / T; SDPA stays fused
unless maps are recorded). State-dict keys do not change. A forward that meets neither a softmax
nor SDPA raises: the temperature would silently not apply.

ConViT's gated positional attention has two softmaxes (content and position); both are tempered.
Recorded maps are the head-averaged probabilities of the module's first softmax (B', N, N).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

_SOFTMAX = {torch.Tensor.softmax, F.softmax, torch.softmax}
_SDPA = F.scaled_dot_product_attention


def head_mean(probs: torch.Tensor) -> torch.Tensor:
    """(B', N, M) maps from (..., heads, N, M) probabilities: mean over heads (dim -3), leading
    dims (batch, windows, groups) flattened; a 3-d input is returned as it is."""
    return probs if probs.dim() == 3 else probs.mean(-3).flatten(0, -3)


class AttentionMode(TorchFunctionMode):
    """Temper softmax / SDPA calls by 1/T; optionally record the probabilities of the first."""

    def __init__(self, temperature: float, record: bool = False) -> None:
        super().__init__()
        self.temperature = temperature
        self.record = record
        self.calls = 0
        self.maps: list[torch.Tensor] = []

    def __torch_function__(self, func: Any, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = dict(kwargs or {})
        if func in _SOFTMAX:
            self.calls += 1
            logits, *rest = args
            out = func(logits / self.temperature if self.temperature != 1.0 else logits,
                       *rest, **kwargs)
            if self.record and not self.maps and out.dim() >= 3:
                self.maps.append(head_mean(out))
            return out
        if func is _SDPA:
            self.calls += 1
            return self._sdpa(*args, **kwargs)
        return func(*args, **kwargs)

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0,
              is_causal: bool = False, scale: float | None = None, **extra: Any) -> torch.Tensor:
        t = self.temperature
        # SDPA's default, written as timm does (head_dim ** -0.5): bit-identical to self.scale
        scale = (q.shape[-1] ** -0.5 if scale is None else scale) / t
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask / t
        if not self.record:
            return _SDPA(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                         scale=scale, **extra)
        logits = (q * scale) @ k.transpose(-2, -1)
        n, m = logits.shape[-2:]
        if is_causal:
            logits = logits + logits.new_full((n, m), float("-inf")).triu_(1)
        elif attn_mask is not None:
            logits = logits.masked_fill(~attn_mask, float("-inf")) \
                if attn_mask.dtype == torch.bool else logits + attn_mask
        probs = logits.softmax(-1)
        if not self.maps:
            self.maps.append(head_mean(probs))
        return F.dropout(probs, dropout_p) @ v


class TemperedAttention(nn.Module):
    """Mixin placed before an attention class by `tempered` (never instantiated directly)."""

    _rbv_tempered: ClassVar[bool] = True
    attn_temperature: float  # not `temperature`: XCiT's XCA has a parameter of that name
    record_attention: bool
    last_attn: torch.Tensor | None
    tap: nn.Module | None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.tap is not None:
            x = self.tap(x)
        record = self.record_attention and self.training
        if self.attn_temperature == 1.0 and not record:
            return super().forward(x, *args, **kwargs)  # bit-identical to the original module
        mode = AttentionMode(self.attn_temperature, record)
        with mode:
            out = super().forward(x, *args, **kwargs)
        if mode.calls == 0:
            raise RuntimeError(f"{type(self).__mro__[2].__name__} computed no softmax or SDPA: "
                               "its attention temperature cannot be changed")
        if record:
            self.last_attn = mode.maps[0] if mode.maps else None
        return out


_SUBCLASSES: dict[type, type] = {}


def tempered(attn: nn.Module, *, temperature: float = 1.0, tap: nn.Module | None = None,
             record: bool = False) -> nn.Module:
    """Give `attn` a temperature, an optional input transform and map recording, in place.

    The new class keeps the name of the original one (adapters find attention modules by class
    name, and a tempered model is tempered again or scanned for its maps the same way); its
    `_rbv_tempered` attribute tells it apart.
    """
    cls = type(attn)
    if not getattr(cls, "_rbv_tempered", False):
        if cls not in _SUBCLASSES:
            _SUBCLASSES[cls] = type(cls.__name__, (TemperedAttention, cls),
                                    {"__module__": __name__, "__qualname__": cls.__qualname__})
        attn.__class__ = _SUBCLASSES[cls]
    attn.attn_temperature = float(temperature)  # type: ignore[assignment]
    if tap is not None or "tap" not in attn._modules:
        attn.tap = tap  # type: ignore[assignment]
    attn.record_attention = record  # type: ignore[assignment]
    attn.last_attn = None  # type: ignore[assignment]
    return attn
