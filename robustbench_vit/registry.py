"""One generic registry: names to components, lazy entries, did-you-mean errors."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class Entry(Generic[T]):
    """A registered component, or a lazy "module:attr" reference resolved on first use."""

    name: str
    target: T | str
    meta: dict[str, Any]


class Registry(Generic[T]):
    """Maps names to components; `register` is a decorator, `get` raises with suggestions."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, target: T | None = None, **meta: Any) -> Callable[[T], T] | T:
        """Register `target` under `name` (as a decorator when `target` is omitted)."""

        def add(obj: T) -> T:
            if name in self._entries and self._entries[name].target is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = Entry(name=name, target=obj, meta=dict(meta))
            return obj

        return add if target is None else add(target)

    def register_lazy(self, name: str, reference: str, **meta: Any) -> None:
        """Register "module:attribute", imported only when the entry is first used."""
        self._entries[name] = Entry(name=name, target=reference, meta=dict(meta))

    def unregister(self, name: str) -> None:
        """Remove an entry (tests and plugin reloads)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The component registered under `name`; UnknownNameError with suggestions otherwise."""
        entry = self._entries.get(name)
        if entry is None:
            raise UnknownNameError(self.kind, name, self.suggest(name), self.names())
        if isinstance(entry.target, str):
            module, _, attr = entry.target.partition(":")
            obj = getattr(importlib.import_module(module), attr)
            entry = Entry(name=name, target=obj, meta=entry.meta)
            self._entries[name] = entry
        return entry.target  # type: ignore[return-value]

    def meta(self, name: str) -> dict[str, Any]:
        """The metadata given at registration."""
        self.get(name)
        return self._entries[name].meta

    def suggest(self, name: str) -> list[str]:
        """Registered names close to `name`."""
        return difflib.get_close_matches(name, self.names(), n=2, cutoff=0.5)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def describe(self, name: str) -> str:
        """First line of the component's docstring (what `rbv ls` prints)."""
        doc = getattr(self.get(name), "__doc__", None) or ""
        return self.meta(name).get("description") or (doc.strip().splitlines() or [""])[0]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


ATTACKS: Registry[Any] = Registry("attack")
DEFENSES: Registry[Any] = Registry("defense")
SCENARIOS: Registry[Any] = Registry("scenario")
DATASETS: Registry[Any] = Registry("dataset")
METRICS: Registry[Any] = Registry("metric")
ZOO: Registry[Any] = Registry("zoo recipe")
CORRUPTIONS: Registry[Any] = Registry("corruption")

REGISTRIES: dict[str, Registry[Any]] = {
    "attacks": ATTACKS,
    "defenses": DEFENSES,
    "scenarios": SCENARIOS,
    "datasets": DATASETS,
    "metrics": METRICS,
    "zoo": ZOO,
    "corruptions": CORRUPTIONS,
}
