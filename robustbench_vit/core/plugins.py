"""Load plugins: the built-in modules and the ``robustbench_vit.plugins`` entry points.
Idempotent."""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points

from .errors import RbvError

log = logging.getLogger(__name__)


class PluginError(RbvError):
    """A plugin module failed to import."""

    exit_code = 2

ENTRY_POINT_GROUP = "robustbench_vit.plugins"
BUILTIN_PLUGINS: tuple[str, ...] = ("attacks", "defenses")
CORE_MODULES: tuple[str, ...] = (
    "robustbench_vit.data.datasets",
    "robustbench_vit.data.shapes",
    "robustbench_vit.models.zoo",
    "robustbench_vit.core.metrics",
    "robustbench_vit.scenarios",
    "robustbench_vit.models.undefended",
    "robustbench_vit.data.corruptions",
)

_loaded: set[str] = set()
_scanned = False


def load_plugins(rescan: bool = False) -> list[str]:
    """Import core components, built-in plugins and entry-point plugins once; returns their names.

    Entry points are scanned on the first call (or with `rescan`), not on every cell.
    """
    global _scanned
    if _scanned and not rescan:
        return sorted(_loaded)
    for module in CORE_MODULES + BUILTIN_PLUGINS:
        _load(module, module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _load(ep.value, ep.name)
    _scanned = True
    return sorted(_loaded)


def _load(target: str, name: str) -> None:
    if target in _loaded:
        return
    module, _, attr = target.partition(":")
    try:
        obj = importlib.import_module(module)
    except ImportError as exc:
        raise PluginError(
            f"plugin {name!r} ({target}) could not be imported: {exc} "
            "(is the package that provides it installed in this environment?)"
        ) from exc
    if attr:
        obj = getattr(obj, attr)
        if callable(obj):
            obj()
    _loaded.add(target)
    log.debug("loaded plugin %s (%s)", name, target)
