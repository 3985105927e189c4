"""Per-family model adapters: what defenses and scenarios may ask of a model (see base.py)."""

from . import families  # noqa: F401  - registers the built-in adapters
from .base import (
    ADAPTERS,
    FamilyAdapter,
    Stage,
    adapter_for,
    arranged,
    check_same_shapes,
    family_of,
    register_adapter,
    unwrap,
)

__all__ = ["ADAPTERS", "FamilyAdapter", "Stage", "adapter_for", "arranged", "check_same_shapes",
           "family_of", "register_adapter", "unwrap"]
