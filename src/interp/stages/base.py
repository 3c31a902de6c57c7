"""The stage contract: a base class, a summary table, and the registry. Imports no torch.

A stage is one file: a short class that says what it needs, whether it is on by default, its options
(a pydantic model) and how to compute and draw. What a stage receives is a :class:`StageContext`;
the runner (:mod:`interp.analysis.runner`) skips, orders, times and logs stages; a stage never opens a
writer, reloads data or names another stage.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import Tensor, nn

    from ..analysis.evaluation import Evaluation
    from ..analysis.sink import Sink
    from ..data import Data, Probe

__all__ = ["MARKS", "NEEDS", "STAGES", "NoOptions", "Stage", "StageContext", "Summary", "register_stage"]

STAGES: dict[str, type[Stage]] = {}

# What a stage may declare in ``needs``; the runner skips a stage whose needs the run cannot meet.
NEEDS = {
    "images": "needs image inputs",
    "classes": "needs a classification task",
    "conv": "the model has no convolutional layers",
    "training": "records during training only",
    "features": "",  # penultimate features: the evaluation pass keeps them (never a reason to skip)
    "dynamics": "no per-example training dynamics: they are recorded by `interp train`, and by the Analyzer "
                "and the Lightning callback when given each batch's indices and logits",
    "health": "no layer statistics: they are recorded by `interp train`, by the Analyzer inside "
              "`analyzer.watch(model, optimizer)` and by the Lightning callback",
}


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


MARKS = ("good", "bad")  # what a row's mark may say (the report colours it); None: nothing to say


@dataclass
class Summary:
    """A table a stage returns; the report shows it, the Python API returns it, and the CLI prints it (unless
    ``terminal`` is False: a table too long for the end of a run, such as one row per class). ``marks``: per
    row, ``"good"``, ``"bad"`` or None — a verdict as a value, for the report to colour."""

    title: str
    columns: list[str]
    rows: list[list[Any]]
    notes: list[str] = field(default_factory=list)
    epoch: int | None = None
    marks: list[str | None] | None = None
    terminal: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "columns": self.columns, "rows": self.rows, "notes": self.notes,
                "epoch": self.epoch, "marks": self.marks, "terminal": self.terminal}


@dataclass
class StageContext:
    """Everything a stage may use: the epoch's :class:`Evaluation`, and the sink to write to.

    ``folder`` is where this analysis point's files go, relative to the run (``epoch_003``,
    ``analysis/best``); ``tag`` prefixes TensorBoard tags (``""``, ``"analysis/best/"``)."""

    evaluation: Evaluation
    sink: Sink
    folder: str
    tag: str = ""
    initial_state: dict[str, Tensor] | None = None  # the weights at epoch 0, when known
    notice: Callable[[str], None] = print
    numbers: dict[str, float] = field(default_factory=dict)  # → metrics.jsonl and TensorBoard scalars
    # what one stage leaves for a later one: attribution maps by method name, (B, H, W) on the device; the
    # median completeness error of each integrated-gradients method
    maps: dict[str, Tensor] = field(default_factory=dict)
    completeness: dict[str, float] = field(default_factory=dict)
    methods: tuple[str, ...] = ()  # the attribution methods to draw and score (analysis.methods)
    # a progress bar over the stages (``Reporter.progress``), and what the running stage says it is doing
    progress: Callable[[str, int], contextlib.AbstractContextManager[Callable[..., None]]] | None = None
    status: Callable[[str], None] = lambda what: None
    stage: str = ""
    during_training: bool = True
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)  # this stage's, until its record is written
    kept: dict[str, Any] = field(default_factory=dict)
    # every training example's numbers per epoch (interp.analysis.dynamics.Dynamics), when the training recorded them
    dynamics: Any = None
    # every layer's activations, gradients and updates per epoch (interp.analysis.health.Health), when recorded
    health: Any = None
    run_folder: Path | None = None  # the run's folder (what training kept there: checkpoints, training records)

    # -- the evaluation, for short -----------------------------------------------------------------
    @property
    def model(self) -> nn.Module:
        return self.evaluation.model

    @property
    def data(self) -> Data:
        return self.evaluation.data

    @property
    def probe(self) -> Probe:
        return self.evaluation.probe

    @property
    def epoch(self) -> int:
        return self.evaluation.epoch

    @property
    def final(self) -> bool:
        return self.evaluation.final

    @property
    def device(self) -> torch.device:
        return self.evaluation.data.device

    @property
    def step(self) -> int:
        return self.epoch

    # -- writing -------------------------------------------------------------------------------------
    def record(self, key: str, value: float) -> None:
        """A number for metrics.jsonl (``<stage>/<key>``) and a TensorBoard scalar."""
        name = f"{self.stage}/{key}"
        self.numbers[name] = float(value)
        self.sink.scalar(f"{self.tag}{name}", float(value), self.step)

    def draw(self, name: str, view: Callable[..., Any], *args: Any, scale: dict[str, float] | None = None,
             **kwargs: Any) -> None:
        """Figure ``<stage>/<name>.png``, drawn by ``view`` — a module-level function of plain values (arrays,
        numbers, strings, lists, mappings) returning PNG bytes or a matplotlib figure — from this stage's
        record: the arguments are kept there first, then drawn (by the drawing worker when the run has one).

        ``scale``: the colour limits the view uses (``{"gradient": 0.12}``), for a figure whose magnitudes
        matter; the view receives it as ``scale=`` (with ``scale_note=``), and at the end of a run every
        epoch's figure of this kind is drawn again on the largest of each limit over the run."""
        import inspect

        from ..analysis.records import register_view, view_name

        register_view(view)
        try:
            fields = dict(inspect.signature(view).bind(*args, **kwargs).arguments)
        except TypeError as exc:
            raise TypeError(f"figure {name}: the arguments do not fit {view.__qualname__} ({exc})") from None
        self.figures[name] = {"view": view_name(view),
                              "scale": None if scale is None else {k: float(v) for k, v in scale.items()},
                              "fields": fields}

    def keep(self, name: str, value: Any) -> None:
        """Arrays or values kept in this stage's record beside its figures (``record.data[name]``)."""
        self.kept[name] = value

    def save_file(self, name: str, content: bytes | str) -> None:
        """A file beside the stage's figures (JSON, CSV, tensors)."""
        self.sink.file(f"{self.folder}/{self.stage}/{name}", content)

    def save_json(self, name: str, value: Any) -> None:
        """Strict JSON: a NaN or an infinity is written as null."""
        from ..run import strict_json

        self.save_file(name, json.dumps(strict_json(value), indent=1, allow_nan=False))

    def histogram(self, name: str, values: Any) -> None:
        self.sink.histogram(f"{self.tag}{name}", values, self.step)

    def video(self, name: str, frames: list[np.ndarray], fps: float, formats: list[str]) -> None:
        self.sink.video(f"{self.folder}/{self.stage}/{name}", frames, fps, formats)

    def write_record(self, summary: Summary | None) -> None:
        """This stage's record (its figures' data, numbers, summary and kept values), then its figures."""
        from ..analysis.records import RECORD, Record, encode_record, worker_imports

        prefix = f"{self.stage}/"
        record = Record(stage=self.stage, epoch=self.epoch, figures=self.figures,
                        numbers={k: v for k, v in self.numbers.items() if k.startswith(prefix)},
                        summary=None if summary is None else summary.to_json(), data=self.kept)
        where = f"{self.folder}/{self.stage}"
        self.sink.file(f"{where}/{RECORD}", encode_record(record))
        for name, entry in self.figures.items():
            self.sink.figure(f"{where}/{RECORD}", name, f"{where}/{name}.png", f"{self.tag}{self.stage}/{name}",
                             self.step, imports=worker_imports(entry["view"]))

    # -- small helpers for drawing -------------------------------------------------------------------
    def eval_logits(self) -> Tensor:
        return self.evaluation.logits()

    def eval_features(self) -> Tensor:
        return self.evaluation.features()

    def title(self, i: int, probs: Tensor) -> str:
        """'true 7\\npred 7 (0.98)' for probe item ``i`` given softmax probabilities (B, classes): two short
        lines, so that long class names fit above a small panel."""
        classes = self.data.classes
        pred = int(probs[i].argmax())
        return f"true {classes[int(self.probe.y[i])]}\npred {classes[pred]} ({float(probs[i, pred]):.2f})"

    def probe_probs(self) -> Tensor:
        import torch

        with torch.no_grad():
            return torch.softmax(self.model(self.probe.x), dim=1)

    def pixels(self, i: int) -> np.ndarray:
        return self.probe.pixels[i].detach().cpu().numpy()

    def probe_sheet(self) -> tuple[np.ndarray, list[str]]:
        """The probe images' pixels (B, C, H, W) and their two-line titles: what a sheet drawn by the
        drawing worker needs of them."""
        probs = self.probe_probs()
        return self.probe.pixels.detach().cpu().numpy(), [self.title(i, probs) for i in range(len(probs))]


class Stage:
    """One analysis. Subclasses set ``name`` and ``description``, may declare ``Options``, ``needs``,
    ``default`` and ``runs_after``, and implement :meth:`run`; :func:`register_stage` adds them."""

    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions
    needs: ClassVar[frozenset[str]] = frozenset({"images", "classes"})
    default: ClassVar[bool] = True  # on when the config lists no stages
    runs_after: ClassVar[tuple[str, ...]] = ()  # stages whose results this one reads, when they run

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
