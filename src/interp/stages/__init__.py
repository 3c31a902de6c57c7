"""Analysis stages, one module each, registered by name. ``interp stages`` lists them."""

from __future__ import annotations

# Importing a stage module registers it; this order is the order of `interp stages`.
from . import (  # noqa: F401
    activation_gif,
    activations,
    confusion,
    embeddings,
    gradcam,
    integrated_gradients,
    neuron_video,
    neurons,
    saliency,
    trust,
    weights,
)
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
