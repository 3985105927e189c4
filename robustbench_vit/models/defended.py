"""Training defenses: a base model fine-tuned with a defense, cached by content hash.

A zoo: model trains on its recipe's data (below); a model with a suite `finetune:` (any source,
needed for timm: and file:) on the data that names (models/user_finetune.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.cache import build_once, cache_dir, save_checkpoint
from ..core.cells import ModelConfig, stable_hash
from ..core.errors import ModelLoadError
from ..core.registry import ZOO
from . import user_finetune
from .sources import split_source
from .training import TrainConfig, accuracy, train_classifier

log = logging.getLogger(__name__)

DEFENSE_FORMAT = 1
"""Bump when defense fine-tuning changes what it produces."""


def _recipe_name(base: ModelConfig, defense: Any) -> str:
    prefix, name = split_source(base.source)
    if prefix != "zoo":
        raise ModelLoadError(
            f"{type(defense).__name__} is a training defense: a {prefix}: model needs "
            f"finetune: {{data: ...}} to be fine-tuned with it (got {base.source})")
    return name


def defended_path(base: ModelConfig, defense: Any) -> Path:
    """Where the defended checkpoint of `base` lives in the cache."""
    if base.finetune is not None:
        return user_finetune.defended_path(base, defense)
    name = _recipe_name(base, defense)
    key = stable_hash([DEFENSE_FORMAT, ZOO.get(name).recipe_hash(), type(defense).__name__,
                       defense.training_settings()])
    return cache_dir("zoo") / f"{name}+{type(defense).__name__}-{key}.safetensors"


def _fresh(name: str, defense: Any) -> nn.Module:
    recipe = ZOO.get(name)
    model = recipe.build_untrained()
    torch.manual_seed(recipe.seed + 1)  # new defense parameters are initialized reproducibly
    return defense.apply(model)


def ensure_defended(base: ModelConfig, defense: Any, device: torch.device) -> Path:
    """Fine-tune `base` with `defense` unless cached; returns the checkpoint path."""
    if base.finetune is not None:
        return user_finetune.ensure_defended(base, defense, torch.device(device))
    path = defended_path(base, defense)
    return build_once(path, lambda: _fine_tune(_recipe_name(base, defense), defense, path,
                                               torch.device(device)))


def _fine_tune(name: str, defense: Any, path: Path, device: torch.device) -> None:
    """Write zoo recipe `name` fine-tuned with `defense` (and its record) to `path`."""
    from .zoo import load_zoo_model

    recipe = ZOO.get(name)
    base_model = load_zoo_model(name, device).eval()
    model = _fresh(name, defense).to(device)
    missing = model.load_state_dict(base_model.state_dict(), strict=False)
    log.info("fine-tuning %s with %s (new: %s)", name, type(defense).__name__,
             ", ".join(missing.missing_keys[:6]) or "none")
    cfg = TrainConfig(epochs=getattr(defense, "epochs", 10), batch_size=recipe.batch_size,
                      lr=getattr(defense, "lr", 1e-3), weight_decay=recipe.weight_decay,
                      seed=recipe.seed)
    teacher = base_model if getattr(defense, "distill", False) else None
    train_set = recipe.dataset_source(recipe.train_split).load()
    seconds = train_classifier(model, train_set, cfg, device, teacher=teacher,
                               extra_loss=defense.training_loss)
    test_acc = accuracy(model, recipe.dataset_source("test").load(), device)
    save_checkpoint(path, model, {
        "base": name, "defense": type(defense).__name__, "settings": defense.training_settings(),
        "test_accuracy": test_acc, "train_seconds": round(seconds, 2)})
    log.info("%s + %s: test accuracy %.4f after %.1fs", name, type(defense).__name__,
             test_acc, seconds)


def load_defended_model(base: ModelConfig, defense: Any, device: torch.device) -> nn.Module:
    """The base model fine-tuned with a training defense (trained first when not cached)."""
    from safetensors.torch import load_file

    if base.finetune is not None:
        return user_finetune.load_defended(base, defense, torch.device(device))
    path = ensure_defended(base, defense, device)
    model = _fresh(_recipe_name(base, defense), defense)
    model.load_state_dict(load_file(str(path)))
    return model.to(device).eval()
