"""Caps that keep a hostile suite file from hanging or exhausting memory.

A suite and its includes may hold at most `RBV_SUITE_MAX_BYTES` bytes in all (default 1 MiB),
checked before a file is parsed, and expand to at most `RBV_YAML_MAX_NODES` YAML nodes (default
100,000), counted with every alias expanded on the composed node graph — before any Python object
is built — so a few kilobytes of nested anchors ("billion laughs") are refused in milliseconds.
An alias that refers to the node it sits in (a recursive structure) is refused too. Both limits
are environment variables a user can raise; the messages name them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..core.errors import SuiteError

MAX_BYTES_ENV = "RBV_SUITE_MAX_BYTES"
MAX_NODES_ENV = "RBV_YAML_MAX_NODES"
DEFAULT_MAX_BYTES = 1 << 20
DEFAULT_MAX_NODES = 100_000


def env_limit(name: str, default: int, file: Path) -> int:
    """The positive whole number in environment variable `name`, else `default`."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        value = 0
    if value <= 0:
        raise SuiteError(str(file), [("", f"{name}={raw!r}: expected a positive whole number")])
    return value


@dataclass
class YamlBudget:
    """What one suite (with its includes) may still read: bytes and expanded YAML nodes."""

    max_bytes: int
    max_nodes: int
    bytes_read: int = 0
    nodes_seen: int = 0

    @classmethod
    def from_env(cls, file: Path) -> YamlBudget:
        """The limits set in the environment (or the defaults)."""
        return cls(max_bytes=env_limit(MAX_BYTES_ENV, DEFAULT_MAX_BYTES, file),
                   max_nodes=env_limit(MAX_NODES_ENV, DEFAULT_MAX_NODES, file))

    def read_text(self, path: Path) -> str:
        """The text of `path`, refused before parsing when it would pass the byte limit."""
        left = self.max_bytes - self.bytes_read
        size, data = path.stat().st_size, b""
        if size <= left:
            with path.open("rb") as handle:  # read no more than the limit, whatever stat said
                data = handle.read(left + 1)
            size = len(data)
        if size > left:
            already = f" ({self.bytes_read:,} already read)" if self.bytes_read else ""
            raise SuiteError(str(path), [("", (
                f"the file is {size:,} bytes, over the limit of {self.max_bytes:,} bytes for a "
                f"suite and its includes{already}; set {MAX_BYTES_ENV} to raise it"))])
        self.bytes_read += size
        return data.decode("utf-8")

    def count_nodes(self, path: Path, root: yaml.Node) -> None:
        """Refuse a document whose aliases expand past the node limit, or refer to themselves."""
        sizes, shared = expanded_sizes(root, path)
        total = sizes[id(root)]
        if self.nodes_seen + total > self.max_nodes:
            where = _heavy_path(root, sizes, shared, self.max_nodes - self.nodes_seen)
            raise SuiteError(str(path), [(where, (
                f"the file expands to {total:,} YAML nodes with its aliases, over the limit of "
                f"{self.max_nodes:,} for a suite and its includes; set {MAX_NODES_ENV} to raise "
                "it"))])
        self.nodes_seen += total


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def expanded_sizes(root: yaml.Node, path: Path) -> tuple[dict[int, int], set[int]]:
    """(id(node) -> the number of nodes under it with aliases expanded, itself included; the ids
    of nodes used more than once, through aliases). Each node is visited once."""
    sizes: dict[int, int] = {}
    shared: set[int] = set()
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            shared.add(key)
            return sizes[key]
        if key in active:
            line = node.start_mark.line + 1
            raise SuiteError(str(path), [("", f"line {line}: an alias refers to a node it is "
                                              "inside (a recursive structure)")])
        active.add(key)
        total = 1
        for child in _children(node):  # a loop, not a generator: one frame per level
            total += size(child)
        active.discard(key)
        sizes[key] = total
        return total

    size(root)
    return sizes, shared


def _heavy_path(root: yaml.Node, sizes: dict[int, int], shared: set[int], limit: int) -> str:
    """The field path of the deepest node that alone passes `limit` short of the aliased nodes
    (where the expansion is written)."""
    path, node = "", root
    while True:
        step = None
        if isinstance(node, yaml.MappingNode):
            step = next(((value, f"{path}.{key.value}" if path else str(key.value))
                         for key, value in node.value
                         if isinstance(key, yaml.ScalarNode) and sizes[id(value)] > limit
                         and id(value) not in shared), None)
        elif isinstance(node, yaml.SequenceNode):
            step = next(((child, f"{path}[{i}]") for i, child in enumerate(node.value)
                         if sizes[id(child)] > limit and id(child) not in shared), None)
        if step is None:
            return path
        node, path = step
