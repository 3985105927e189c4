"""Fine-tuning timm:/file: models (any model with a suite `finetune:`) on data the suite names.

Two kinds of checkpoint, both cached under $RBV_CACHE/finetune by content hash, each with a JSON
training record beside it:

* the *base* fine-tune (`finetune.base: true`): the model itself trained with cross-entropy; every
  defense of it, `none` included, starts from the result (its fingerprint changes accordingly);
* a *defended* fine-tune: the (base) model with a training defense applied, trained with the
  defense's loss. A defense's own `epochs`, `lr` and `distill` fields take precedence over the
  `finetune:` ones, as for zoo models.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..core.cache import build_once, cache_dir, save_checkpoint
from ..core.cells import ModelConfig, stable_hash
from ..core.errors import ModelLoadError
from ..core.params import field_names, to_plain, validate_params
from ..core.registry import DATASETS
from .sources import (
    NormalizedModel,
    build_model,
    build_source_model,
    model_fingerprint,
    split_source,
)
from .training import TrainConfig, accuracy, train_classifier

log = logging.getLogger(__name__)

FINETUNE_FORMAT = 1
"""Bump when fine-tuning code changes what it produces (part of every fine-tune's cache key)."""

TRAIN_SEED = 0
"""Seed of the data order and of the parameters a defense adds (seed + 1)."""


@dataclass(frozen=True, kw_only=True)
class Finetune:
    """A model's `finetune:` settings; `data` is {"dataset": name, **every dataset field}."""

    data: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.05
    base: bool = False

    @classmethod
    def of(cls, cfg: ModelConfig) -> Finetune:
        """The settings of `cfg`; ModelLoadError when it has no `finetune:`."""
        if cfg.finetune is None:
            raise ModelLoadError(f"{cfg.source}: no `finetune:` settings")
        return cls(**cfg.finetune)

    def source(self, split: str | None = None) -> Any:
        """The dataset component, with `split` replaced when given (and the dataset has one)."""
        params = {k: v for k, v in self.data.items() if k != "dataset"}
        cls = DATASETS.get(self.data["dataset"])
        if split is not None and "split" in field_names(cls):
            params["split"] = split
        return validate_params(cls, params)


def is_base(cfg: ModelConfig) -> bool:
    """Whether the model itself is fine-tuned (`finetune.base: true`)."""
    return bool(cfg.finetune and cfg.finetune.get("base"))


def base_fingerprint(source_fingerprint: str, finetune: dict[str, Any]) -> str:
    """The fingerprint of a model fine-tuned with `finetune` from weights `source_fingerprint`."""
    return "finetuned-" + stable_hash([FINETUNE_FORMAT, source_fingerprint, finetune])


def weights_fingerprint(cfg: ModelConfig) -> str:
    """The fingerprint of the weights cells see (computed when the config carries none)."""
    if cfg.fingerprint:
        return cfg.fingerprint
    found = model_fingerprint(cfg, Path.cwd())
    return base_fingerprint(found, cfg.finetune or {}) if is_base(cfg) else found


def _slug(cfg: ModelConfig) -> str:
    name = split_source(cfg.source)[1].rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name)[:60]


def base_path(cfg: ModelConfig) -> Path:
    """Where the base fine-tune of `cfg` lives in the cache."""
    return cache_dir("finetune") / f"{_slug(cfg)}-{weights_fingerprint(cfg)}.safetensors"


def defended_path(cfg: ModelConfig, defense: Any) -> Path:
    """Where `cfg` fine-tuned with training defense `defense` lives in the cache."""
    name = type(defense).__name__
    key = stable_hash([FINETUNE_FORMAT, weights_fingerprint(cfg), cfg.finetune, name,
                       defense.training_settings()])
    return cache_dir("finetune") / f"{_slug(cfg)}+{name}-{key}.safetensors"


def _skeleton(cfg: ModelConfig, device: torch.device) -> NormalizedModel:
    """The source's architecture, for loading a cached checkpoint into (timm: never
    downloads)."""
    if split_source(cfg.source)[0] == "timm":
        cfg = replace(cfg, pretrained=False)
    return build_source_model(cfg, device)


def _check_head(model: nn.Module, cfg: ModelConfig, classes: int) -> None:
    """A clear error when the model has fewer outputs than the training data has classes."""
    outputs = getattr(getattr(model, "backbone", model), "num_classes", None)
    if isinstance(outputs, int) and 0 < outputs < classes:
        raise ModelLoadError(
            f"{cfg.source} has {outputs} outputs but its finetune data has {classes} classes: "
            f"set kwargs: {{num_classes: {classes}}}")


def _train(model: nn.Module, cfg: ModelConfig, tc: TrainConfig, device: torch.device,
           label: str, **hooks: Any) -> dict[str, Any]:
    """Train `model` in place on the `finetune:` data; returns the record's training fields."""
    ft = Finetune.of(cfg)
    data_config = getattr(model, "data_config", None)
    source = ft.source()
    train_set = source.load(data_config)
    _check_head(model, cfg, source.num_classes())

    def on_epoch(epoch: int, loss: float) -> None:
        log.info("fine-tuning %s: epoch %d/%d, loss %.4f", label, epoch + 1, tc.epochs, loss)

    seconds = train_classifier(model, train_set, tc, device, on_epoch=on_epoch, **hooks)
    record = {**_evaluation(model, ft, train_set, data_config, device),
              "train_seconds": round(seconds, 2)}
    log.info("fine-tuned %s in %.1fs: %s", label, seconds,
             ", ".join(f"{k} {v}" for k, v in record.items() if k.endswith("accuracy")))
    return record


def _evaluation(model: nn.Module, ft: Finetune, train_set: Dataset,
                data_config: dict[str, Any] | None, device: torch.device) -> dict[str, Any]:
    """Test-split accuracy when the data is a `train` split with a `test` one beside it, else
    the accuracy on the training data itself, labelled as such."""
    if ft.data.get("split") == "train":
        try:
            test_set = ft.source("test").load(data_config)
        except Exception as exc:  # noqa: BLE001 - no usable test split: fall back, say so
            log.info("no test split for %s (%s): recording training accuracy",
                     ft.data["dataset"], exc)
        else:
            return {"test_accuracy": accuracy(model, test_set, device), "accuracy_on": "test"}
    return {"train_accuracy": accuracy(model, train_set, device),
            "accuracy_on": "training data (no held-out split)"}


def _record(cfg: ModelConfig, tc: TrainConfig, device: torch.device) -> dict[str, Any]:
    return {"source": cfg.source, "fingerprint": weights_fingerprint(cfg),
            "finetune": cfg.finetune, "train": to_plain(tc), "device": str(device),
            "torch": torch.__version__}


def ensure_base(cfg: ModelConfig, device: torch.device) -> Path:
    """Fine-tune the model itself on its `finetune:` data unless cached; the checkpoint path."""
    path = base_path(cfg)

    def build() -> None:
        ft = Finetune.of(cfg)
        model = build_source_model(cfg, device)
        tc = TrainConfig(epochs=ft.epochs, batch_size=ft.batch_size, lr=ft.lr,
                         weight_decay=ft.weight_decay, seed=TRAIN_SEED)
        log.info("fine-tuning %s on %s (base: true)", cfg.source, ft.data["dataset"])
        record = _train(model, cfg, tc, device, cfg.source)
        save_checkpoint(path, model, {**_record(cfg, tc, device), "defense": None, **record})

    return build_once(path, build)


def load_base(cfg: ModelConfig, device: torch.device) -> NormalizedModel:
    """The model fine-tuned on its `finetune:` data (trained first when not cached), eval mode."""
    from safetensors.torch import load_file

    path = ensure_base(cfg, device)
    model = _skeleton(cfg, device)
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def _with_defense(model: nn.Module, defense: Any) -> nn.Module:
    torch.manual_seed(TRAIN_SEED + 1)  # new defense parameters are initialized reproducibly
    return defense.apply(model)


def ensure_defended(cfg: ModelConfig, defense: Any, device: torch.device) -> Path:
    """Fine-tune the (base) model with training defense `defense` unless cached; the path."""
    path = defended_path(cfg, defense)

    def build() -> None:
        ft = Finetune.of(cfg)
        name = type(defense).__name__
        base = build_model(cfg, device)
        teacher = _frozen(copy.deepcopy(base)) if getattr(defense, "distill", False) else None
        model = _with_defense(base, defense).to(device)
        tc = TrainConfig(epochs=getattr(defense, "epochs", ft.epochs), batch_size=ft.batch_size,
                         lr=getattr(defense, "lr", ft.lr), weight_decay=ft.weight_decay,
                         seed=TRAIN_SEED)
        log.info("fine-tuning %s with %s on %s", cfg.source, name, ft.data["dataset"])
        record = _train(model, cfg, tc, device, f"{cfg.source} + {name}", teacher=teacher,
                        extra_loss=defense.training_loss)
        save_checkpoint(path, model, {**_record(cfg, tc, device), "defense": name,
                                      "defense_settings": defense.training_settings(),
                                      "distill": teacher is not None, **record})

    return build_once(path, build)


def _frozen(model: nn.Module) -> nn.Module:
    """`model` in eval mode without gradients: the undefended teacher of a distilling defense."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def load_defended(cfg: ModelConfig, defense: Any, device: torch.device) -> nn.Module:
    """The (base) model fine-tuned with a training defense (trained first when not cached)."""
    from safetensors.torch import load_file

    path = ensure_defended(cfg, defense, device)
    model = _with_defense(_skeleton(cfg, device), defense).to(device)
    model.load_state_dict(load_file(str(path)))
    return model.eval()
