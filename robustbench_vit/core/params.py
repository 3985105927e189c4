"""Component parameters: validate YAML mappings against a component's dataclass fields.

Every component (attack, dataset, scenario, defense, zoo recipe) is a kw_only dataclass whose fields
are its YAML keys. `validate_params` builds (and caches) a pydantic model from those fields, with
`extra=forbid` and fractions such as ``8/255`` accepted wherever a float is expected.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from typing import Annotated, Any, Union

import pydantic
from pydantic import BeforeValidator, ConfigDict

_FRACTION = re.compile(r"^\s*([+-]?\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)\s*/\s*(\d+(?:\.\d*)?)\s*$")


def parse_fraction(value: Any) -> Any:
    """Turn "8/255" into 8/255; other values pass through for pydantic to judge."""
    if isinstance(value, str):
        match = _FRACTION.match(value)
        if match:
            num, den = float(match.group(1)), float(match.group(2))
            if den == 0:
                raise ValueError(f"fraction {value!r} divides by zero")
            return num / den
    return value


class _FractionJsonSchema:
    """JSON Schema of a Real: the number's own schema, or a fraction string such as "8/255"."""

    def __get_pydantic_json_schema__(self, schema: Any, handler: Any) -> dict[str, Any]:
        return {"anyOf": [handler(schema), {"type": "string", "pattern": _FRACTION.pattern}]}


Real = Annotated[float, BeforeValidator(parse_fraction), _FractionJsonSchema()]
"""A float that also accepts fractions written as "a/b" (in validation and in the JSON Schema)."""


def _with_fractions(tp: Any) -> Any:
    """Replace float by Real inside a type annotation (Optional, list, tuple, dict...)."""
    if tp is float:
        return Real
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Annotated:
        base, *metadata = args
        # a tuple first: mypy (for 3.10) rejects Annotated[(x, *m)], which 3.10 itself accepts
        parts = (_with_fractions(base), *metadata)
        return Annotated[parts]
    if not args or origin is typing.Literal:
        return tp
    new_args = tuple(_with_fractions(a) for a in args)
    if origin is Union or str(origin) == "<class 'types.UnionType'>":
        return Union[new_args]  # noqa: UP007
    try:
        return origin[new_args if len(new_args) > 1 else new_args[0]]
    except TypeError:
        return tp


@functools.cache
def params_model(cls: type) -> type[pydantic.BaseModel]:
    """A pydantic model with the dataclass fields of `cls` (init fields only), extra=forbid."""
    hints = typing.get_type_hints(cls, include_extras=True)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = pydantic.Field(default_factory=f.default_factory)
        else:
            default = ...
        fields[f.name] = (_with_fractions(hints[f.name]), default)
    config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, title=cls.__name__)
    return pydantic.create_model(f"{cls.__name__}Params", __config__=config, **fields)


class ParamError(ValueError):
    """A cross-field check of a component failed; `field` locates it."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


def validate_params(cls: type, params: dict[str, Any]) -> Any:
    """Build `cls(**params)` after validation; raises pydantic.ValidationError with locations."""
    model = params_model(cls)
    validated = model.model_validate(params)
    values = {name: getattr(validated, name) for name in model.model_fields}
    instance = cls(**values)
    check = getattr(instance, "check", None)
    if callable(check):
        check()
    return instance


def field_names(cls: type) -> list[str]:
    """The YAML keys a component accepts."""
    return [f.name for f in dataclasses.fields(cls) if f.init]


def to_plain(obj: Any) -> Any:
    """Plain JSON-able data (dicts, lists, numbers, strings) from dataclasses and containers."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def without_unkeyed(params: dict[str, Any], unkeyed: dict[str, Any]) -> dict[str, Any]:
    """`params` without the fields that sit at their `unkeyed` default: fields added after results
    (or checkpoints) were stored stay out of keys and hashes at that default, so existing ones
    hold. Shared by attacks and scenarios (`unkeyed_defaults`) and zoo recipes."""
    return {k: v for k, v in params.items() if k not in unkeyed or v != unkeyed[k]}


def describe_fields(cls: type) -> str:
    """"name=default, ..." for `rbv ls` (required fields show without a default)."""
    parts = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            parts.append(f"{f.name}={f.default!r}")
        elif f.default_factory is not dataclasses.MISSING:
            parts.append(f"{f.name}={f.default_factory()!r}")
        else:
            parts.append(f.name)
    return ", ".join(parts)
