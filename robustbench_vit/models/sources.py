"""Models: `zoo:`, `timm:` and `file:` sources, always wrapped as Normalize ∘ backbone on [0,1]
images."""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.cells import ModelConfig, stable_hash
from ..core.errors import ModelLoadError
from ..core.registry import Registry

log = logging.getLogger(__name__)


class NormalizedModel(nn.Module):
    """Normalize ∘ backbone: takes [0,1] images, normalizes with the backbone's data config."""

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(self, backbone: nn.Module, data_config: dict[str, Any] | None = None):
        super().__init__()
        self.backbone = backbone
        self.data_config = dict(data_config or resolve_data_config(backbone))
        mean = torch.tensor(self.data_config["mean"], dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.data_config["std"], dtype=torch.float32).view(1, -1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone((x - self.mean) / self.std)


def resolve_data_config(backbone: nn.Module) -> dict[str, Any]:
    """timm's data config of `backbone`, its input_size fixed to the size the model was built for.

    timm reports the pretrained default (224) for a ViT created with another `img_size`.
    """
    import timm.data

    config = dict(timm.data.resolve_model_data_config(backbone))
    img_size = getattr(getattr(backbone, "patch_embed", None), "img_size", None)
    if img_size:
        h, w = img_size if isinstance(img_size, (tuple, list)) else (img_size, img_size)
        config["input_size"] = (config["input_size"][0], int(h), int(w))
    return config


@dataclass(frozen=True, kw_only=True)
class ModelSource:
    """How one kind of `source:` prefix is validated, fingerprinted and built."""

    def problems(self, cfg: ModelConfig, base_dir: Path) -> list[tuple[str, str]]:
        """(field, message) pairs for a config this source cannot build."""
        return []

    def fingerprint(self, cfg: ModelConfig, base_dir: Path) -> str:
        """A string that changes whenever the weights would."""
        raise NotImplementedError

    def build(self, cfg: ModelConfig, device: torch.device) -> NormalizedModel:
        """The model, in eval mode, on `device`."""
        raise NotImplementedError


SOURCES: Registry[type[ModelSource]] = Registry("model source")


def split_source(source: str) -> tuple[str, str]:
    """"zoo:digits_vit" -> ("zoo", "digits_vit")."""
    prefix, _, rest = source.partition(":")
    return prefix, rest


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub is reachable: not offline mode, and its host answers."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # only the proxy knows; let the download try
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def hub_offline(enabled: bool) -> Iterator[None]:
    """Inside the block huggingface_hub reads only its local cache (no requests, no retries)."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or enabled
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def create_timm_backbone(arch: str, kwargs: dict[str, Any], pretrained: bool = False) -> nn.Module:
    """timm.create_model with a clear error for unknown names and unreachable hubs.

    Without a reachable hub, pretrained weights come from the local Hugging Face cache or fail at
    once (huggingface_hub would otherwise retry each file for about a minute).
    """
    import timm

    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=2, cutoff=0.7)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ModelLoadError(f"unknown timm architecture {arch!r}{hint}")
    try:
        with hub_offline(pretrained and not hub_reachable()):
            return timm.create_model(arch, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:
        if pretrained:
            raise ModelLoadError(
                f"timm:{arch}: pretrained weights could not be loaded ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]}). Offline? Put the weights in the Hugging Face "
                "cache first, or use a file: source with a local checkpoint."
            ) from None
        raise ModelLoadError(f"timm:{arch}: {exc}") from None


@SOURCES.register("timm")
@dataclass(frozen=True, kw_only=True)
class TimmSource(ModelSource):
    """Any timm architecture; weights downloaded only with `pretrained: true` where a hub is
    reachable."""

    def problems(self, cfg: ModelConfig, base_dir: Path) -> list[tuple[str, str]]:
        import timm

        arch = split_source(cfg.source)[1]
        if timm.is_model(arch):
            return []
        close = difflib.get_close_matches(arch, timm.list_models(), n=2, cutoff=0.7)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return [("source", f"unknown timm architecture {arch!r}{hint}")]

    def fingerprint(self, cfg: ModelConfig, base_dir: Path) -> str:
        import timm

        tag = f"timm-{timm.__version__}" if cfg.pretrained else "random-init-seed0"
        return stable_hash([cfg.source, cfg.kwargs, tag])

    def build(self, cfg: ModelConfig, device: torch.device) -> NormalizedModel:
        torch.manual_seed(0)  # random-init models are reproducible
        backbone = create_timm_backbone(split_source(cfg.source)[1], cfg.kwargs, cfg.pretrained)
        return NormalizedModel(backbone).to(device).eval()


@SOURCES.register("file")
@dataclass(frozen=True, kw_only=True)
class FileSource(ModelSource):
    """A local checkpoint (safetensors, or a torch file loaded with weights_only=True) plus
    `arch:`."""

    def problems(self, cfg: ModelConfig, base_dir: Path) -> list[tuple[str, str]]:
        out = []
        if not resolve_path(cfg.source, base_dir).is_file():
            out.append(("source", f"checkpoint not found: {resolve_path(cfg.source, base_dir)}"))
        if not cfg.arch:
            out.append(("arch", "a file: source needs `arch:` (a timm architecture name)"))
        return out

    def fingerprint(self, cfg: ModelConfig, base_dir: Path) -> str:
        digest = hashlib.sha256(resolve_path(cfg.source, base_dir).read_bytes()).hexdigest()
        return stable_hash([digest, cfg.arch, cfg.kwargs])

    def build(self, cfg: ModelConfig, device: torch.device) -> NormalizedModel:
        backbone = create_timm_backbone(cfg.arch or "", cfg.kwargs)
        path = Path(split_source(cfg.source)[1])
        state = load_state_dict(path)
        try:
            backbone.load_state_dict(state)
        except RuntimeError as exc:
            # line 0 is "Error(s) in loading state_dict for X:"; the first problem follows it
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            first = lines[1] if len(lines) > 1 else lines[0]
            raise ModelLoadError(
                f"{path}: weights do not fit arch {cfg.arch!r}: {first[:240]}") from None
        return NormalizedModel(backbone).to(device).eval()


def resolve_path(source: str, base_dir: Path) -> Path:
    """The checkpoint path of a file: source, relative to the suite's folder."""
    path = Path(split_source(source)[1]).expanduser()
    return path if path.is_absolute() else (base_dir / path)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Weights from safetensors or a torch checkpoint (weights_only), unwrapping common nestings."""
    if not path.is_file():
        raise ModelLoadError(f"checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input error
        raise ModelLoadError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path}: expected a state dict, got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def model_problems(cfg: ModelConfig, base_dir: Path) -> list[tuple[str, str]]:
    """Validation problems of a model config (unknown prefix, recipe, file, arch)."""
    prefix = split_source(cfg.source)[0]
    if prefix not in SOURCES:
        return [("source", f"unknown source prefix {prefix!r} (use zoo:, timm: or file:)")]
    return SOURCES.get(prefix)().problems(cfg, base_dir)


def model_fingerprint(cfg: ModelConfig, base_dir: Path) -> str:
    """Fingerprint of the weights a config names."""
    return SOURCES.get(split_source(cfg.source)[0])().fingerprint(cfg, base_dir)


def build_source_model(cfg: ModelConfig, device: torch.device) -> NormalizedModel:
    """The source's own weights (before any `finetune: {base: true}`), wrapped, in eval mode."""
    return SOURCES.get(split_source(cfg.source)[0])().build(cfg, device)


def build_model(cfg: ModelConfig, device: torch.device | str = "cpu") -> NormalizedModel:
    """The model a config names, wrapped, in eval mode, on `device` (fine-tuned first on its
    `finetune:` data when it sets `base: true`)."""
    if cfg.finetune and cfg.finetune.get("base"):
        from .user_finetune import load_base

        model = load_base(cfg, torch.device(device))
    else:
        model = build_source_model(cfg, torch.device(device))
    if cfg.family is not None:
        model.rbv_family = cfg.family  # type: ignore[assignment]  # read by adapter_for
    return model
