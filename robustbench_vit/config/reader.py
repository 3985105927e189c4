"""Read suite YAML files: `include:` of defaults files, deep merge, located errors, duplicates.

An include is a path relative to the file that names it and must stay inside the folder of the
suite file given to rbv (symbolic links resolved), or inside a folder listed in
`RBV_INCLUDE_ROOTS` (separated by the OS path separator); it must be a .yaml or .yml mapping. An
included file none of whose top-level keys is a suite field is not a suite file: it is refused
without quoting it. Each file is read once per suite, within the limits of `yaml_limits`.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml

from ..core.errors import SuiteError
from .yaml_limits import YamlBudget

INCLUDE_ROOTS_ENV = "RBV_INCLUDE_ROOTS"
YAML_SUFFIXES = (".yaml", ".yml")


def read_yaml(path: Path, suite_fields: Collection[str] = ()) -> dict[str, Any]:
    """The mapping in `path`, with its `include:` files merged underneath (the file wins).

    `suite_fields`: the top-level keys of a suite; an included file with none of them is
    refused as not a suite file (without its content)."""
    path = path.resolve()
    return _Reader(path, suite_fields).read(path, ())


def include_roots(top: Path) -> tuple[Path, ...]:
    """The folders includes may come from: the suite file's own, and `RBV_INCLUDE_ROOTS`."""
    extra = [Path(p).expanduser().resolve()
             for p in os.environ.get(INCLUDE_ROOTS_ENV, "").split(os.pathsep) if p.strip()]
    return (top.parent, *extra)


class _Reader:
    """One suite's reading: the roots includes must stay in, the byte and node budget shared by
    every file, and the files already read (a file included twice is read once)."""

    def __init__(self, top: Path, suite_fields: Collection[str]) -> None:
        self.roots = include_roots(top)
        self.fields = set(suite_fields)
        self.budget = YamlBudget.from_env(top)
        self.done: dict[Path, dict[str, Any]] = {}

    def read(self, path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
        if path in seen:
            chain = " -> ".join(p.name for p in (*seen, path))
            raise SuiteError(str(seen[0]), [("include", f"include cycle: {chain}")])
        if path in self.done:
            return self.done[path]
        if not seen and not path.is_file():
            raise SuiteError(str(path), [("", f"file not found: {path}")])
        data = self._document(path, included=bool(seen))
        includes = data.pop("include", [])
        listed = isinstance(includes, list)
        if isinstance(includes, str):
            includes = [includes]
        if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
            raise SuiteError(str(path),
                             [("include", "expected a file name or a list of file names")])
        merged: dict[str, Any] = {}
        for i, name in enumerate(includes):
            target = self._include(path, name, f"include[{i}]" if listed else "include")
            merged = deep_merge(merged, self.read(target, (*seen, path)))
        self.done[path] = deep_merge(merged, data)
        return self.done[path]

    def _include(self, parent: Path, name: str, field: str) -> Path:
        """The file an include names, refused outside the roots, not YAML, or missing."""
        try:
            target = (parent.parent / name).resolve()
        except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte
            raise SuiteError(str(parent), [(field, f"{name!r} cannot be resolved ({exc})")]) \
                from None
        if not any(target.is_relative_to(root) for root in self.roots):
            raise SuiteError(str(parent), [(field, (
                f"{name!r} is outside the suite's folder {self.roots[0]}: includes must stay "
                f"inside it (or inside a folder listed in {INCLUDE_ROOTS_ENV})"))])
        if target.suffix.lower() not in YAML_SUFFIXES:
            raise SuiteError(str(parent), [(field, f"{name!r} is not a .yaml or .yml file")])
        if not target.is_file():
            raise SuiteError(str(parent), [(field, f"file not found: {target}")])
        return target

    def _document(self, path: Path, *, included: bool) -> dict[str, Any]:
        """The mapping in one file (its includes not merged yet)."""
        try:
            data, duplicates = self._load(path, included)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise SuiteError(str(path), [("", f"YAML syntax error: {where}{problem}")]) from None
        except UnicodeDecodeError as exc:
            raise SuiteError(str(path), [("", f"not a UTF-8 text file ({exc.reason})")]) from None
        except RecursionError:
            raise SuiteError(str(path), [("", "YAML nested too deeply")]) from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise SuiteError(str(path),
                             [("", f"expected a mapping at the top, got {type(data).__name__}")])
        if duplicates:
            raise SuiteError(str(path), duplicates)
        return data

    def _load(self, path: Path, included: bool) -> tuple[Any, list[tuple[str, str]]]:
        """The document in `path` and its duplicate keys (PyYAML would silently keep the last
        one); the node budget is charged before anything is constructed."""
        loader = yaml.SafeLoader(self.budget.read_text(path))
        try:
            node = loader.get_single_node()
            if node is None:
                return None, []
            if included:
                self._check_suite_keys(path, node)
            self.budget.count_nodes(path, node)
            return loader.construct_document(node), _duplicate_keys(node, "", set())
        finally:
            loader.dispose()

    def _check_suite_keys(self, path: Path, node: yaml.Node) -> None:
        """Refuse an included mapping none of whose keys is a suite field, without its keys."""
        if not isinstance(node, yaml.MappingNode) or not self.fields:
            return
        names = [str(k.value) if isinstance(k, yaml.ScalarNode) else None for k, _ in node.value]
        others = [n for n in names if n != "include"]
        if others and not self.fields.intersection(others):
            raise SuiteError(str(path), [("", (
                "included, but not a suite file: none of its top-level keys is a suite field "
                f"({', '.join(sorted(self.fields))})"))])


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
