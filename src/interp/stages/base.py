"""The stage mechanism: a base class, a registry, the context every stage receives, and the runner."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor, nn

from ..data import Data, Probe

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

STAGES: dict[str, type[Stage]] = {}


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class StageContext:
    """Everything a stage may use. Stages write through ``writer`` and into ``out_dir``, nothing else."""

    model: nn.Module  # in eval mode
    epoch: int
    final: bool  # the last epoch of training, or `interp analyze`
    device: torch.device
    data: Data  # classes, evaluation data, normalisation
    probe: Probe  # the same images every epoch
    writer: Any  # the run's SummaryWriter
    folder: Path  # epoch_NNN/ during training, analysis/<checkpoint>/ in `interp analyze`
    tag: str = ""  # prefix of TensorBoard tags ("" in training, "analysis/best/" in analyze)
    initial_state: dict[str, Tensor] | None = None  # the weights at epoch 0, when known
    notice: Callable[[str], None] = print
    numbers: dict[str, float] = field(default_factory=dict)  # → metrics.jsonl and TensorBoard scalars
    shared: dict[str, Any] = field(default_factory=dict)  # results one stage leaves for a later one
    stage: str = ""
    eval_batch_size: int = 1000
    _eval_logits: Tensor | None = None
    _eval_features: Tensor | None = None

    @property
    def out_dir(self) -> Path:
        path = self.folder / self.stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def step(self) -> int:
        return self.epoch

    def record(self, key: str, value: float) -> None:
        """A number for metrics.jsonl (``<stage>/<key>``) and a TensorBoard scalar."""
        name = f"{self.stage}/{key}"
        self.numbers[name] = float(value)
        self.writer.add_scalar(f"{self.tag}{name}", float(value), self.step)

    def save_figure(self, fig: Any, name: str) -> Path:
        """Render ``fig`` once (or take PNG bytes, e.g. from a tile sheet): PNG in this stage's folder and
        the same image in TensorBoard."""
        from ..plotting import render

        png = fig if isinstance(fig, bytes) else render(fig)
        path = self.out_dir / f"{name}.png"
        path.write_bytes(png)
        add_png(self.writer, f"{self.tag}{self.stage}/{name}", png, self.step)
        return path

    def eval_logits(self) -> Tensor:
        """Logits for the whole evaluation set, computed once per epoch and shared by the stages."""
        if self._eval_logits is None:
            with torch.no_grad():
                batches = self.data.eval_batches(self.eval_batch_size)
                self._eval_logits = torch.cat([self.model(x) for x, _ in batches])
        return self._eval_logits

    def eval_features(self) -> Tensor:
        """Penultimate features of the whole evaluation set (N, ...): from training's evaluation pass when
        it kept them, otherwise one pass here (which also fills :meth:`eval_logits`)."""
        if self._eval_features is None:
            logits, features = [], []
            with torch.no_grad():
                for x, _ in self.data.eval_batches(self.eval_batch_size):
                    out = self.model.forward_features(x)  # type: ignore[operator]
                    logits.append(out[0])
                    features.append(out[1])
            self._eval_logits = torch.cat(logits)
            self._eval_features = torch.cat(features)
        return self._eval_features

    def title(self, i: int, probs: Tensor) -> str:
        """'true 7 · pred 7 (0.98)' for probe item ``i`` given softmax probabilities (B, classes)."""
        classes = self.data.classes
        pred = int(probs[i].argmax())
        return f"true {classes[int(self.probe.y[i])]} · pred {classes[pred]} ({float(probs[i, pred]):.2f})"

    def probe_probs(self) -> Tensor:
        with torch.no_grad():
            return torch.softmax(self.model(self.probe.x), dim=1)

    def pixels(self, i: int) -> np.ndarray:
        return self.probe.pixels[i].detach().cpu().numpy()


def add_png(writer: Any, tag: str, png: bytes, step: int) -> None:
    """Log already-encoded PNG bytes as a TensorBoard image (no decode and re-encode)."""
    import struct

    from tensorboard.compat.proto.summary_pb2 import Summary

    width, height, _, colour_type = struct.unpack(">IIBB", png[16:26])  # the PNG's IHDR chunk
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(colour_type, 3)
    image = Summary.Image(height=height, width=width, colorspace=channels, encoded_image_string=png)
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


class Stage:
    """One analysis. Subclasses set ``name`` and ``description``, may declare an ``Options`` model,
    and implement :meth:`run`. Register them with :func:`register_stage`."""

    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[BaseModel]] = NoOptions
    needs_images: ClassVar[bool] = True  # skipped (with a notice) on toy 2-D data
    needs_classes: ClassVar[bool] = True  # skipped on regression

    def __init__(self, options: BaseModel | None = None):
        self.options: Any = options if options is not None else self.Options()
        self.skip_noticed = False

    def prepare(self, model: nn.Module, data: Data) -> None:
        """Called once before epoch 0; check model-dependent options here so mistakes fail at once."""

    def run(self, ctx: StageContext) -> None:
        raise NotImplementedError

    # Training-time hooks (used by the animation stages). `on_step` is called only if overridden.
    def on_step(self, model: nn.Module, step: int, epoch: int, run_dir: Path) -> None:
        """Called after every optimiser step."""

    def on_train_end(self, model: nn.Module, run_dir: Path, notice: Callable[[str], None]) -> None:
        """Called once after the last epoch."""

    def skip_reason(self, model: nn.Module, data: Data) -> str | None:
        if self.needs_images and not data.is_image:
            return "needs image inputs"
        if self.needs_classes and data.task != "classification":
            return "needs a classification task"
        return None


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator: add a stage to the registry under ``cls.name``."""
    STAGES[cls.name] = cls
    return cls


def parse_stage_specs(specs: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    """Normalise ``[name | {name: {options}}]`` to ``[(name, options)]``; raises ValueError on bad shapes."""
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


def validate_stage_specs(specs: list[Any]) -> list[Stage]:
    """Build the stages in ``specs``; unknown names or options raise ValueError naming the entry."""
    stages: list[Stage] = []
    seen: set[str] = set()
    for i, (name, options) in enumerate(parse_stage_specs(specs)):
        cls = STAGES.get(name)
        if cls is None:
            raise ValueError(f"entry {i}: unknown stage {name!r} (known: {', '.join(sorted(STAGES))})")
        if name in seen:
            raise ValueError(f"entry {i}: stage {name!r} is listed twice")
        seen.add(name)
        try:
            stages.append(cls(cls.Options.model_validate(options)))
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            what = "unknown option" if err["type"] == "extra_forbidden" else err["msg"]
            raise ValueError(f"entry {i} ({name}): {key}: {what}") from None
    return stages


def build_stages(specs: list[Any]) -> list[Stage]:
    """The configured stages, in order (the config was validated, so this does not fail)."""
    return validate_stage_specs(specs)


def run_stages(stages: list[Stage], ctx: StageContext) -> dict[str, float]:
    """Run each stage on ``ctx`` in eval mode, leaving the training RNG and mode untouched.

    Returns the numbers the stages recorded plus ``seconds/<stage>`` for each stage that ran.
    """
    model = ctx.model
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
            for stage in stages:
                reason = stage.skip_reason(model, ctx.data)
                if reason:
                    if not stage.skip_noticed:  # once per run, not every epoch
                        ctx.notice(f"{stage.name}: skipped ({reason})")
                        stage.skip_noticed = True
                    continue
                start = time.perf_counter()
                ctx.stage = stage.name
                stage.run(ctx)
                ctx.numbers[f"seconds/{stage.name}"] = round(time.perf_counter() - start, 4)
    finally:
        model.train(was_training)
    return ctx.numbers
