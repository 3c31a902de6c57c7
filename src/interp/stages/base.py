"""The stage contract: a base class, a summary table, and the registry. Imports no torch.

A stage is one file: a short class that says what it needs, whether it is on by default, its options
(a pydantic model) and how to compute and draw. The runner (:mod:`interp.analysis.runner`) skips,
orders, times and logs stages; a stage never opens a writer, reloads data or names another stage.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from torch import nn

    from ..analysis.runner import StageContext
    from ..analysis.sink import Sink
    from ..data import Data

__all__ = ["NEEDS", "STAGES", "NoOptions", "Stage", "Summary", "register_stage"]

STAGES: dict[str, type[Stage]] = {}

# What a stage may declare in ``needs``; the runner skips a stage whose needs the run cannot meet.
NEEDS = {
    "images": "needs image inputs",
    "classes": "needs a classification task",
    "conv": "the model has no convolutional layers",
    "training": "records during training only",
    "features": "",  # penultimate features: the evaluation pass keeps them (never a reason to skip)
}


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class Summary:
    """A table a stage returns; the CLI prints it, the report shows it, the Python API returns it."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    notes: list[str] = field(default_factory=list)
    epoch: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "columns": self.columns, "rows": self.rows, "notes": self.notes,
                "epoch": self.epoch}


class Stage:
    """One analysis. Subclasses set ``name`` and ``description``, may declare ``Options``, ``needs``,
    ``default`` and ``runs_after``, and implement :meth:`run`; :func:`register_stage` adds them."""

    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions
    needs: ClassVar[frozenset[str]] = frozenset({"images", "classes"})
    default: ClassVar[bool] = True  # on when the config lists no stages
    runs_after: ClassVar[tuple[str, ...]] = ()  # stages whose results this one reads, when they run
    # modules its figures need (beyond matplotlib): the drawing worker imports them while it waits for the
    # run's first figure, instead of on the way to drawing one
    drawing_imports: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: BaseModel | None = None):
        self.options: Any = options if options is not None else self.Options()
        self.skip_noticed = False

    def prepare(self, model: nn.Module, data: Data) -> None:
        """Called once before epoch 0; check model-dependent options here so mistakes fail at once."""

    def run(self, ctx: StageContext) -> Summary | None:
        raise NotImplementedError

    # Training-time hooks (used by the animation stages). `on_step` is called only if overridden.
    def on_step(self, model: nn.Module, step: int, epoch: int) -> None:
        """Called after every optimiser step."""

    def on_train_end(self, model: nn.Module, sink: Sink, notice: Callable[[str], None]) -> None:
        """Called once after the last epoch."""

    def skip_reason(self, model: nn.Module, data: Data) -> str | None:
        """Why this stage cannot run on ``model`` and ``data`` (None: it can). Checks ``needs``."""
        if "images" in self.needs and not data.is_image:
            return NEEDS["images"]
        if "classes" in self.needs and data.task != "classification":
            return NEEDS["classes"]
        if "conv" in self.needs:
            from ..models import last_spatial_layer

            if last_spatial_layer(model) is None:
                return NEEDS["conv"]
        return None


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator: add a stage to the registry under ``cls.name`` (a second registration warns)."""
    previous = STAGES.get(cls.name)
    if previous is not None and previous is not cls:
        warnings.warn(f"stage {cls.name!r} registered twice: {previous.__module__}.{previous.__qualname__} is "
                      f"replaced by {cls.__module__}.{cls.__qualname__}", stacklevel=2)
    unknown = set(cls.needs) - set(NEEDS)
    if unknown:
        raise TypeError(f"stage {cls.name!r}: unknown needs {sorted(unknown)} (known: {', '.join(NEEDS)})")
    STAGES[cls.name] = cls
    return cls
