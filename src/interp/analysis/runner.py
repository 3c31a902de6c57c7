"""The stage runner: what a stage receives (:class:`StageContext`), and running stages in order.

The runner skips the stages a run cannot serve (with one notice per run), orders them so a stage runs
after the ones it reads from, times each, keeps the training RNG and the model's mode untouched, and
collects the numbers and summary tables the stages produce.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..data import Data, Probe
from ..stages.base import Stage, Summary
from .evaluation import Evaluation
from .sink import Sink, WriteError

__all__ = ["StageContext", "StageResults", "order_stages", "run_stages"]


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
    stage: str = ""
    during_training: bool = True
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)  # this stage's, until its record is written
    kept: dict[str, Any] = field(default_factory=dict)

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

        ``scale``: the colour limits the view uses (``{"saliency": 0.12}``), for a figure whose magnitudes
        matter; the view receives it as ``scale=`` (with ``scale_note=``), and at the end of a run every
        epoch's figure of this kind is drawn again on the largest of each limit over the run."""
        import inspect

        from .records import register_view, view_name

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
        from .records import RECORD, Record, encode_record

        prefix = f"{self.stage}/"
        record = Record(stage=self.stage, epoch=self.epoch, figures=self.figures,
                        numbers={k: v for k, v in self.numbers.items() if k.startswith(prefix)},
                        summary=None if summary is None else summary.to_json(), data=self.kept)
        where = f"{self.folder}/{self.stage}"
        self.sink.file(f"{where}/{RECORD}", encode_record(record))
        for name, entry in self.figures.items():
            imports = () if entry["view"].startswith("interp.") else (entry["view"].split(":")[0],)
            self.sink.figure(f"{where}/{RECORD}", name, f"{where}/{name}.png", f"{self.tag}{self.stage}/{name}",
                             self.step, imports=imports)
        self.figures, self.kept = {}, {}

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
        with torch.no_grad():
            return torch.softmax(self.model(self.probe.x), dim=1)

    def pixels(self, i: int) -> np.ndarray:
        return self.probe.pixels[i].detach().cpu().numpy()

    def probe_sheet(self) -> tuple[np.ndarray, list[str]]:
        """The probe images' pixels (B, C, H, W) and their two-line titles: what a sheet drawn by the
        drawing worker needs of them."""
        probs = self.probe_probs()
        return self.probe.pixels.detach().cpu().numpy(), [self.title(i, probs) for i in range(len(probs))]


@dataclass
class StageResults:
    numbers: dict[str, float]
    summaries: dict[str, Summary]
    failed: dict[str, str] = field(default_factory=dict)  # stage → "ErrorType: message"


def order_stages(stages: list[Stage]) -> list[Stage]:
    """Config order, except that a stage moves after every listed stage it ``runs_after``."""
    remaining = list(stages)
    ordered: list[Stage] = []
    while remaining:
        names = {s.name for s in remaining}
        ready = next((s for s in remaining if not (set(s.runs_after) & (names - {s.name}))), remaining[0])
        ordered.append(ready)
        remaining.remove(ready)
    return ordered


def run_stages(stages: list[Stage], ctx: StageContext, strict: bool = False) -> StageResults:
    """Run each stage on ``ctx`` in eval mode, leaving the training RNG and mode untouched.

    Returns the numbers the stages recorded plus ``seconds/<stage>`` for each stage that ran, and the
    summary tables they returned (also written as ``<stage>/summary.json``). A stage that fails is
    reported in one notice, its traceback appended to ``errors.log``, and the others go on; with
    ``strict`` the failure is raised instead."""
    model = ctx.model
    was_training = model.training
    model.eval()
    summaries: dict[str, Summary] = {}
    failed: dict[str, str] = {}
    # cuDNN's autotuner times every algorithm for each new input shape; the stages bring many shapes (probe
    # batches, integrated-gradients steps, perturbed copies), each used a few times. They run on cuDNN's
    # heuristics instead (the all-conv recipe on an H200: the stages at epoch 0 took 3.2 s instead of 18.2 s,
    # the final trust check 7.2 s instead of 12.7 s); the training's shapes keep their tuned algorithms.
    autotune = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
            for stage in order_stages(stages):
                reason = stage.skip_reason(model, ctx.data)
                if reason is None and "training" in stage.needs and not ctx.during_training:
                    reason = "records during `interp train` only"
                if reason:
                    if not stage.skip_noticed:  # once per run, not every epoch
                        ctx.notice(f"{stage.name}: skipped ({reason})")
                        stage.skip_noticed = True
                    continue
                start = time.perf_counter()
                ctx.stage = stage.name
                ctx.figures, ctx.kept = {}, {}
                try:
                    summary = stage.run(ctx)
                except WriteError:  # the disk, not the stage: the run stops
                    raise
                except Exception as exc:
                    if strict:
                        raise
                    failed[stage.name] = _report_failure(ctx, stage.name, exc)
                    continue
                if summary is not None:
                    summary.epoch = ctx.epoch if summary.epoch is None else summary.epoch
                    summaries[stage.name] = summary
                    ctx.save_json("summary.json", summary.to_json())
                ctx.write_record(summary)
                ctx.numbers[f"seconds/{stage.name}"] = round(time.perf_counter() - start, 4)
    finally:
        model.train(was_training)
        torch.backends.cudnn.benchmark = autotune
    return StageResults(ctx.numbers, summaries, failed)


def _report_failure(ctx: StageContext, name: str, exc: Exception) -> str:
    import datetime
    import traceback

    what = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    text = "".join(traceback.format_exception(exc))
    ctx.sink.append("errors.log", f"--- {stamp} · stage {name} · epoch {ctx.epoch} ({ctx.folder})\n{text}\n")
    ctx.notice(f"{name}: failed at epoch {ctx.epoch} ({what}); training goes on, the traceback is in errors.log "
               "(analysis.strict: true stops instead)")
    return what
