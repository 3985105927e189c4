"""Read suite YAML files: `include:` of defaults files, deep merge, located errors, duplicates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..core.errors import SuiteError


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
        data, duplicates = _load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SuiteError(str(path), [("", f"YAML syntax error: {where}{problem}")]) from None
    except UnicodeDecodeError as exc:
        raise SuiteError(str(path), [("", f"not a UTF-8 text file ({exc.reason})")]) from None
    if duplicates:
        raise SuiteError(str(path), duplicates)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SuiteError(str(path),
                         [("", f"expected a mapping at the top, got {type(data).__name__}")])
    includes = data.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise SuiteError(str(path), [("include", "expected a file name or a list of file names")])
    merged: dict[str, Any] = {}
    for name in includes:
        merged = deep_merge(merged, read_yaml(path.parent / name, (*_seen, path)))
    return deep_merge(merged, data)


def _load(text: str) -> tuple[Any, list[tuple[str, str]]]:
    """The document in `text` and its duplicate keys (PyYAML would silently keep the last one)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        return loader.construct_document(node), _duplicate_keys(node, "", set())
    finally:
        loader.dispose()


def _duplicate_keys(node: yaml.Node, path: str, seen: set[int]) -> list[tuple[str, str]]:
    """(field path, message) for each mapping key written twice under `node`."""
    if id(node) in seen:  # an alias: its node was checked where the anchor is
        return []
    seen.add(id(node))
    found: list[tuple[str, str]] = []
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += _duplicate_keys(item, f"{path}[{i}]", seen)
    elif isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key, value in node.value:
            name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
            where = f"{path}.{name}" if path else name
            line = key.start_mark.line + 1
            if name in lines and name != "?":
                found.append((where, f"duplicate key {name!r} (lines {lines[name]} and {line})"))
            lines.setdefault(name, line)
            found += _duplicate_keys(value, where, seen)
    return found


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; any other value in `override` replaces the one in `base`."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out
