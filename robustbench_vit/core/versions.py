"""Installed versions, read from package metadata (no imports): the one version source is
pyproject.toml's `version`."""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version


@functools.cache
def package_version(name: str) -> str:
    """The installed version of distribution `name`, or "unknown" when it is not installed."""
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def rbv_version() -> str:
    """The installed robustbench_vit version."""
    return package_version("robustbench_vit")


def torch_version() -> str:
    """The installed torch version (with its local tag, e.g. 2.4.0+cpu, as torch.__version__)."""
    return package_version("torch")


def timm_version() -> str:
    """The installed timm version."""
    return package_version("timm")
