"""JSON Schema of suite files, with one sub-schema per registered scenario kind and attack."""

from __future__ import annotations

from typing import Any

from ..core.params import params_model
from ..core.plugins import load_plugins
from ..core.registry import ATTACKS, SCENARIOS
from .spec import SuiteSpec


def _component_schema(cls: type, extra: dict[str, Any]) -> dict[str, Any]:
    schema = params_model(cls).model_json_schema()
    schema.setdefault("properties", {}).update(extra)
    schema["additionalProperties"] = False
    return schema


def scenario_schemas() -> list[dict[str, Any]]:
    """One schema per scenario kind (per attack name for `attack`)."""
    sweep = {"type": "object", "additionalProperties": {"type": "array", "minItems": 1}}
    out = []
    for kind in SCENARIOS.names():
        cls = SCENARIOS.get(kind)
        if kind == "attack":
            for name in ATTACKS.names():
                out.append(_component_schema(ATTACKS.get(name), {
                    "kind": {"const": "attack"}, "name": {"const": name}, "sweep": sweep,
                    "eot": {"type": "integer", "minimum": 1}}))
        else:
            base, _, name = kind.partition(":")
            extra = {"kind": {"const": base}, "sweep": sweep}
            if name:
                extra["name"] = {"const": name}
            out.append(_component_schema(cls, extra))
    return out


def suite_json_schema() -> dict[str, Any]:
    """The suite schema: SuiteSpec, with `scenarios` items as a union over registered scenarios."""
    load_plugins()
    schema = SuiteSpec.model_json_schema()
    schema["properties"]["scenarios"]["items"] = {"anyOf": scenario_schemas()}
    gates = schema["properties"]["gates"]  # a list of checks, or the mapping with options
    schema["properties"]["gates"] = {"anyOf": [
        {"type": "array", "items": {"$ref": "#/$defs/GateSpec"}}, {k: v for k, v in gates.items()
                                                                  if k != "default"}]}
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
