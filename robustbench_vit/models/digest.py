"""The weights fingerprint of a built model: which weights produced a number.

A recipe hash or a timm name says how weights were made, not which ones came out: the zoo trains
bit-identically on one machine but not across CPUs (float reduction order). Every result row
carries this digest of the evaluated model's state (parameters and buffers, names, dtypes,
shapes and bytes), so a baseline can tell "different weights" from "a regression".
"""

from __future__ import annotations

import hashlib
import weakref

import torch
from torch import nn

_DIGESTS: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def weights_digest(model: nn.Module) -> str:
    """16 hex digits of SHA-256 over `model`'s state dict (computed once per module object;
    a deep copy, e.g. a defended model, gets its own)."""
    if model in _DIGESTS:
        return _DIGESTS[model]
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{data.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    _DIGESTS[model] = found = digest.hexdigest()[:16]
    return found
