"""Shared helpers of the first-party attacks (not an attack module: the name starts with "_")."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import torch
from torch import nn

from robustbench_vit.api import MissingDependencyError

TORCHATTACKS_REQUIREMENT = "torchattacks>=3.5,<4"
TORCHATTACKS_INSTALL = f'pip install --no-deps "{TORCHATTACKS_REQUIREMENT}"'


def require_torchattacks(attack: str) -> ModuleType:
    """The torchattacks module, imported at use; a clear error naming `attack` when it is absent.

    torchattacks is not a dependency of the package: its metadata pins requests~=2.25.1 (it never
    imports requests), so it is installed on its own with --no-deps (`make setup` does it).
    """
    try:
        return importlib.import_module("torchattacks")
    except ImportError as exc:
        problem = ("which is not installed" if exc.name == "torchattacks"
                   else f"which could not be imported ({exc})")
        raise MissingDependencyError(
            f"attack {attack!r} needs torchattacks, {problem}. Install it with: "
            f"{TORCHATTACKS_INSTALL} (--no-deps because torchattacks' metadata pins "
            "requests~=2.25.1, which would downgrade requests, urllib3 and idna; the packages it "
            "really uses are already dependencies of robustbench_vit)."
        ) from exc


def run_torchattack(attack_cls: Any, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    rng_seed: int, **kwargs: Any) -> torch.Tensor:
    """Run a torchattacks attack on [0,1] images with the global RNG seeded and then restored.

    Normalization stays inside our model, so torchattacks' own normalization is never set.
    """
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(rng_seed)
        attack = attack_cls(model, **kwargs)
        return attack(x, y).detach()
