"""Analysis stages, one module each, registered by name; ``interp stages`` lists them.

Nothing here imports torch: the stage modules import it inside their methods, so a config's stages
are checked (and listed) in a fraction of a second. A stage of your own is named in the config as
``package.module:Class`` (a :class:`Stage` subclass) and imported when the config is checked.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import ValidationError

from ..errors import UserError
from .base import STAGES, NoOptions, Stage, Summary, register_stage

# Importing a stage module registers it; this order is the default order of the stages.
BUILT_IN = ("confusion", "calibration", "top_losses", "saliency", "integrated_gradients", "gradcam", "attributions",
            "weights", "neurons", "activations", "exemplars", "feature_visualization", "health", "dataset_map",
            "influence", "embeddings", "trust", "neuron_video", "activation_gif")
for _module in BUILT_IN:
    importlib.import_module(f".{_module}", __name__)

__all__ = [
    "STAGES",
    "NoOptions",
    "Stage",
    "Summary",
    "build_stages",
    "check_stages",
    "default_stage_specs",
    "parse_stage_specs",
    "register_stage",
    "stage_class",
]


def default_stage_specs() -> list[str]:
    """Every built-in stage that is on by default, in registry order. A stage of one's own runs where a
    config names it: importing it (a config that named it, a notebook) does not add it to later runs."""
    return [name for name, cls in STAGES.items() if cls.default and cls.__module__.startswith(f"{__name__}.")]


def parse_stage_specs(specs: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    """Normalize ``[name | {name: {options}}]`` to ``[(name, options)]``; raises ValueError on bad shapes."""
    parsed: list[tuple[str, dict[str, Any]]] = []
    for i, spec in enumerate(specs):
        if isinstance(spec, str):
            parsed.append((spec, {}))
        elif isinstance(spec, dict) and len(spec) == 1:
            name, options = next(iter(spec.items()))
            if options is not None and not isinstance(options, dict):
                raise ValueError(f"entry {i} ({name}): options must be a mapping, got {options!r}")
            parsed.append((str(name), dict(options or {})))
        else:
            raise ValueError(f"entry {i}: expected a stage name or {{name: {{option: value}}}}, got {spec!r}")
    return parsed


def stage_class(name: str) -> type[Stage]:
    """A registered stage by name, or ``package.module:Class`` imported (and registered) on demand."""
    from ..imports import registered

    return registered(name, STAGES, "stage", Stage, "interp.stages.Stage", register_stage)


def build_stages(specs: list[Any] | None) -> list[Stage]:
    """The stages in ``specs`` (None: the default ones) with their options validated; unknown names or
    options raise ValueError naming the entry."""
    stages: list[Stage] = []
    seen: set[str] = set()
    for i, (name, options) in enumerate(parse_stage_specs(default_stage_specs() if specs is None else specs)):
        try:
            cls = stage_class(name)
        except ValueError as exc:
            raise ValueError(f"entry {i}: {exc}") from None
        if cls.name in seen:
            raise ValueError(f"entry {i}: stage {cls.name!r} is listed twice")
        seen.add(cls.name)
        try:
            stages.append(cls(cls.Options.model_validate(options)))
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            what = "unknown option" if err["type"] == "extra_forbidden" else err["msg"].removeprefix("Value error, ")
            raise ValueError(f"entry {i} ({name}): {f'{key}: ' if key else ''}{what}") from None
    return stages


def check_stages(specs: list[Any] | None, source: str = "analysis.stages") -> list[Stage]:
    """:func:`build_stages`, with a mistake turned into a :class:`UserError` naming ``source``."""
    try:
        return build_stages(specs)
    except ValueError as exc:
        raise UserError(f"{source}: {exc}") from None
