"""Analysis stages, one module each, registered by name. ``interp stages`` lists them."""

from __future__ import annotations

from . import confusion  # noqa: F401  (importing a stage module registers it)
from .base import (
    STAGES,
    Stage,
    StageContext,
    build_stages,
    parse_stage_specs,
    register_stage,
    run_stages,
    validate_stage_specs,
)

__all__ = [
    "STAGES",
    "Stage",
    "StageContext",
    "build_stages",
    "parse_stage_specs",
    "register_stage",
    "run_stages",
    "validate_stage_specs",
]
