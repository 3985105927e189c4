"""One generic registry: names to components, lazy entries, did-you-mean errors."""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

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

    @overload
    def register(self, name: str, target: None = None, **meta: Any) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, target: T, **meta: Any) -> T: ...

    def register(self, name: str, target: T | None = None, **meta: Any) -> Callable[[T], T] | T:
        """Register `target` under `name` (as a decorator when `target` is omitted)."""

        def add(obj: T) -> T:
            old = self._entries.get(name)
            if old is not None and old.target is not obj and not _same_value(old.target, obj):
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
        target = entry.target
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            target = getattr(importlib.import_module(module), attr)
            self._entries[name] = Entry(name=name, target=target, meta=entry.meta)
        return target

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


def _same_value(a: Any, b: Any) -> bool:
    """Equal frozen values (e.g. one metric definition registered by two scenarios)."""
    return (dataclasses.is_dataclass(a) and not isinstance(a, type)
            and type(a) is type(b) and a == b)


def scenario_class(kind: str, name: Any) -> Any:
    """The scenario class registered as "kind:name" (transfer:dta), else the one registered as
    "kind"."""
    if isinstance(name, str) and f"{kind}:{name}" in SCENARIOS:
        return SCENARIOS.get(f"{kind}:{name}")
    if kind not in SCENARIOS and isinstance(name, str):
        named = [n for n in SCENARIOS.names() if n.startswith(f"{kind}:")]
        if named:
            full = f"{kind}:{name}"
            close = [c.split(":", 1)[1] for c in SCENARIOS.suggest(full)]
            raise UnknownNameError(f"{kind} scenario", name, close,
                                   [n.split(":", 1)[1] for n in named])
    return SCENARIOS.get(kind)


ATTACKS: Registry[Any] = Registry("attack")
DEFENSES: Registry[Any] = Registry("defense")
SCENARIOS: Registry[Any] = Registry("scenario")
DATASETS: Registry[Any] = Registry("dataset")
METRICS: Registry[Any] = Registry("metric")
ZOO: Registry[Any] = Registry("zoo recipe")
CORRUPTIONS: Registry[Any] = Registry("corruption")
AGGREGATES: Registry[Any] = Registry("aggregate")
"""Functions from the long table (stored rows) to derived rows (mCE, order statistics...)."""
ANNOTATIONS: Registry[Any] = Registry("annotation")
"""Functions from the long table (stored and derived rows) to flags they add to rows: a Series of
flag lists indexed like the table (e.g. a black-box attack beating a gradient attack)."""
PLOTS: Registry[Any] = Registry("plot")
"""Functions from the prepared long table to plot dicts for the HTML report (meta: `order`)."""
FLAGS: Registry[Any] = Registry("flag")
"""Caveats a result row can carry (attack-failure indicators...): name -> the sentence shown."""
FAMILIES: Registry[Any] = Registry("model family")
"""Model-family adapters (robustbench_vit.models.adapters), one instance per family."""

REGISTRIES: dict[str, Registry[Any]] = {
    "attacks": ATTACKS,
    "defenses": DEFENSES,
    "scenarios": SCENARIOS,
    "datasets": DATASETS,
    "metrics": METRICS,
    "zoo": ZOO,
    "corruptions": CORRUPTIONS,
    "aggregates": AGGREGATES,
    "annotations": ANNOTATIONS,
    "plots": PLOTS,
    "families": FAMILIES,
    "flags": FLAGS,
}
