"""Devices a suite or a command asks for, and whether this machine has them, said in words.

torch is imported only to look for a cuda or mps device: validating a cpu or auto suite stays
light.
"""

from __future__ import annotations

import re

DEVICE_PATTERN = r"^(auto|cpu|cuda(:\d+)?|mps)$"


def device_problem(name: str) -> str | None:
    """Why `name` cannot run on this machine ("cuda is not available (no CUDA device)",
    "cuda:7: this machine has 1 CUDA device (cuda:0)"), or None. `auto` always can."""
    if not re.match(DEVICE_PATTERN, name):
        return f"{name!r} is not a device: expected auto, cpu, cuda, cuda:N or mps"
    if name in ("auto", "cpu"):
        return None
    import torch

    if name == "mps":
        return None if torch.backends.mps.is_available() else "mps is not available on this machine"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return f"{name} is not available (no CUDA device)"
    index = int(name.partition(":")[2] or 0)
    if index >= count:
        names = ", ".join(f"cuda:{i}" for i in range(count))
        return f"{name}: this machine has {count} CUDA device{'s' if count > 1 else ''} ({names})"
    return None
