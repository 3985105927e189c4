"""Read suite YAML files: `include:` of defaults files, deep merge, located syntax errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import SuiteError


def read_yaml(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping in `path`, with its `include:` files merged underneath (the file wins)."""
    path = path.resolve()
    if path in _seen:
        chain = " -> ".join(p.name for p in (*_seen, path))
        raise SuiteError(str(_seen[0]), [("include", f"include cycle: {chain}")])
    if not path.is_file():
        where = str(_seen[-1]) if _seen else str(path)
        field = "include" if _seen else ""
        raise SuiteError(where, [(field, f"file not found: {path}")])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SuiteError(str(path), [("", f"YAML syntax error: {where}{problem}")]) from None
    except UnicodeDecodeError as exc:
        raise SuiteError(str(path), [("", f"not a UTF-8 text file ({exc.reason})")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SuiteError(str(path), [("", f"expected a mapping at the top, got {type(data).__name__}")])
    includes = data.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise SuiteError(str(path), [("include", "expected a file name or a list of file names")])
    merged: dict[str, Any] = {}
    for name in includes:
        merged = deep_merge(merged, read_yaml(path.parent / name, (*_seen, path)))
    return deep_merge(merged, data)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; any other value in `override` replaces the one in `base`."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
