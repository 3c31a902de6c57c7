"""Analysis from any training loop: :class:`Analysis` (the stages of one run, as the trainer uses them)
and :class:`Analyzer`, the Python API for a loop of your own.

```python
from interp import Analyzer
analyzer = Analyzer("save/mine", eval_data=(x_eval, y_eval), classes=[str(c) for c in range(10)],
                    mean=(0.1307,), std=(0.3081,), stages=["confusion", "saliency", "trust"])
analyzer.run(model, epoch=0)        # before training; then after every epoch of your loop
analyzer.close()
```

For the dataset map (every training example's dynamics), give ``train_data=(x_train, y_train)`` and hand the
analyzer each training batch's positions in ``x_train`` and the logits your step computed:
``analyzer.observe(index, logits)``; :class:`interp.data.WithIndex` wraps a dataset so that its batches
bring the positions along.

For the layers' health (activations, gradients, update ratios), train inside
``with analyzer.watch(model, optimizer):`` — hooks on the model's layers and the optimiser's steps, removed
when the block ends.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data import Data, Probe, select_probe
from ..errors import UserError
from ..models import logits_model
from ..stages import Stage, Summary, check_stages
from .evaluation import Evaluation, evaluate
from .runner import StageContext, StageResults, run_stages
from .sink import Sink

__all__ = ["Analysis", "Analyzer", "AnalyzerResult"]


class Analysis:
    """The configured stages of one run, their sink and the weights at epoch 0; runs them on an
    :class:`Evaluation` into a folder of the run. Used by ``interp train``, ``interp analyze``, the
    :class:`Analyzer` and the Lightning callback alike."""

    def __init__(self, stages: list[Stage], sink: Sink, *, notice: Callable[[str], None] = lambda m: None,
                 initial_state: dict[str, Tensor] | None = None, during_training: bool = True, strict: bool = False,
                 methods: Sequence[str] | None = None, progress: Callable[..., Any] | None = None):
        from ..attribution import check_methods

        self.progress = progress  # Reporter.progress: a bar over the stages, saying what each is doing
        self.stages = stages
        self.methods = check_methods(methods, "methods")
        self.strict = strict
        self.failed: dict[str, str] = {}  # stage → its latest failure
        self.sink = sink
        self.notice = notice
        self.initial_state = initial_state
        self.during_training = during_training
        self.summaries: dict[str, Summary] = {}
        self.dynamics: Any = None  # the training's per-example dynamics (interp.analysis.dynamics), when recorded
        self.health: Any = None  # the layers' statistics during training (interp.analysis.health), when recorded
        self.run_folder: Path | None = None  # the run's folder, for stages that read what training kept there

    @property
    def wants_features(self) -> bool:
        return any("features" in stage.needs for stage in self.stages)

    def prepare(self, model: nn.Module, data: Data) -> None:
        for stage in self.stages:
            stage.prepare(model, data)

    def step_stages(self) -> list[Stage]:
        """The stages that want to see every optimiser step."""
        return [s for s in self.stages if type(s).on_step is not Stage.on_step]

    def run(self, evaluation: Evaluation, folder: str, tag: str = "") -> StageResults:
        ctx = StageContext(evaluation=evaluation, sink=self.sink, folder=folder, tag=tag,
                           initial_state=self.initial_state, notice=self.notice,
                           during_training=self.during_training, methods=self.methods, progress=self.progress,
                           dynamics=self.dynamics, health=self.health, run_folder=self.run_folder)
        results = run_stages(self.stages, ctx, self.strict)
        self.summaries.update(results.summaries)
        self.failed.update(results.failed)
        return results

    def end(self, model: nn.Module) -> None:
        for stage in self.stages:
            stage.on_train_end(model, self.sink, self.notice)


@dataclass
class AnalyzerResult:
    """What one :meth:`Analyzer.run` wrote: the metrics.jsonl row and the stages' summary tables."""

    row: dict[str, Any]
    summaries: dict[str, Summary] = field(default_factory=dict)


def labelled_pair(pair: Any, classes: int, what: str) -> tuple[Tensor, Tensor]:
    """``(x, y)`` checked: two tensors, as many labels as inputs (at least one), every label a class number;
    returns x and the labels as integers. ``what`` (``eval_data``) names them in a mistake's one line."""
    if not isinstance(pair, tuple | list) or len(pair) != 2 or not all(isinstance(t, Tensor) for t in pair):
        raise UserError(f"{what}: expected a pair of tensors (inputs, labels)")
    x, y = pair
    labels = y.long()
    if len(x) != len(labels) or len(x) == 0 or labels.dim() != 1:
        raise UserError(f"{what}: {len(x)} inputs and {len(labels)} labels (shape {tuple(labels.shape)}); expected "
                        "one label per input, at least one")
    if int(labels.min()) < 0 or int(labels.max()) >= classes:
        raise UserError(f"{what}: labels {int(labels.min())}…{int(labels.max())}, but there are {classes} classes")
    return x, labels


def _tensor_data(x_eval: Tensor, y_eval: Tensor, classes: Sequence[str], mean: Sequence[float] | None,
                 std: Sequence[float] | None) -> Data:
    x_eval, labels = labelled_pair((x_eval, y_eval), len(classes), "eval_data")
    if (mean is None) != (std is None):
        raise UserError("give both mean and std (the normalization x_eval went through), or neither")
    if mean is not None and x_eval.dim() == 4 and len(mean) != x_eval.shape[1]:
        raise UserError(f"mean has {len(mean)} values for {x_eval.shape[1]} channels")
    empty = x_eval[:0]
    return Data(name="eval_data", task="classification", train_x=empty, train_y=labels[:0], eval_x=x_eval.float(),
                eval_y=labels, classes=[str(c) for c in classes], mean=tuple(mean or ()), std=tuple(std or ()),
                normalized=True)


def _with_training(data: Data, train_data: tuple[Tensor, Tensor], device: torch.device) -> Data:
    from dataclasses import replace

    x, labels = labelled_pair(train_data, len(data.classes), "train_data")
    if x.shape[1:] != data.eval_x.shape[1:]:
        raise UserError(f"train_data: inputs of shape {tuple(x.shape[1:])}, eval_data's are {tuple(data.eval_x.shape[1:])}")
    return replace(data, train_x=x.float().to(device), train_y=labels.to(device))


class Analyzer:
    """The analysis stages for a training loop of your own.

    ``eval_data`` is ``(x_eval, y_eval)``: inputs as your model consumes them (already normalized) and
    integer labels. ``mean``/``std`` are the normalization the inputs went through (for drawing the
    images and for the black baseline); without them each image is scaled to its own range for display
    and the baseline is an all-zero input. ``stages``: names or ``{name: {options}}`` (default: the
    default stages). ``methods``: the attribution methods drawn and scored (default:
    :data:`interp.attribution.DEFAULT_METHODS`). ``epochs``: the last epoch, whose analysis is the final one (the randomization
    check, t-SNE); or pass ``final=True`` to :meth:`run`.

    Writes what ``interp train`` writes for those stages into ``folder`` (an existing run folder is never
    reused: ``-2``, ``-3`` … is appended, see :attr:`folder`): ``epoch_NNN/<stage>/``, metrics.jsonl rows
    and TensorBoard events, so ``interp report`` and TensorBoard work on it. Figures are rendered by a
    separate process while your loop goes on (``drawing_worker=False``: in :meth:`run`);
    :meth:`close` waits for them. ``tensorboard=False``: no TensorBoard events in the folder (figures and
    embeddings are files all the same); ``scalars``: every scalar ``(tag, value, epoch)`` is also handed to
    this function (the Lightning callback sends them to the trainer's loggers). ``dynamics``: a
    :class:`~interp.analysis.dynamics.Dynamics` recorded by the caller (the Lightning callback's, which records
    from the first training step, before there is an analyzer): the dataset map reads its history; a resumed
    run's records are the caller's to load into it. ``health``: likewise a
    :class:`~interp.analysis.health.Health` the caller watches the training with (the Lightning callback's).
    """

    def __init__(self, folder: str | Path, *, eval_data: tuple[Tensor, Tensor], classes: Sequence[str],
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 stages: list[Any] | None = None, methods: Sequence[str] | None = None, epochs: int | None = None, probe_per_class: int = 1,
                 seed: int = 0, batch_size: int = 1000, features_layer: str | None = None,
                 device: str | torch.device | None = None, notice: Callable[[str], None] = print,
                 drawing_worker: bool = True, train_data: tuple[Tensor, Tensor] | None = None,
                 resume: int | None = None, tensorboard: bool = True,
                 scalars: Callable[[str, float, int], None] | None = None, dynamics: Any = None,
                 health: Any = None):
        from ..attribution import check_methods
        from ..run import Run

        self._stages = check_stages(stages, "stages")
        self._methods = check_methods(methods, "methods")
        self.data = _tensor_data(eval_data[0], eval_data[1], classes, mean, std)
        self.device = torch.device(device) if device is not None else eval_data[0].device
        self.data = self.data.to(self.device)
        self.epochs = epochs
        self.batch_size = batch_size
        self.features_layer = features_layer
        self.probe: Probe = select_probe(self.data, probe_per_class, seed)
        if train_data is not None:
            self.data = _with_training(self.data, train_data, self.device)
        path = Path(folder)
        if resume is not None:  # a run this analyzer wrote, continued after epoch `resume`
            self.run_folder = Run.open(path, purge_step=resume + 1)
            self.run_folder.keep_metrics_through(resume)
        else:
            self.run_folder, moved = Run.create(path.parent, path.name)
            if moved:
                notice(moved)
        self.folder = self.run_folder.path
        self.run_folder.drawing_worker = drawing_worker
        self.notice = notice
        self.run_folder.sink.events = tensorboard
        self.run_folder.sink.on_scalar = scalars
        self.analysis = Analysis(self._stages, self.run_folder.sink, notice=notice, methods=self._methods)
        self.analysis.run_folder = self.folder
        self._prepared = False
        self.dynamics: Any = dynamics
        self.analysis.dynamics = dynamics
        if dynamics is None and resume is not None and len(self.data.train_y) and any(
                "dynamics" in s.needs for s in self._stages):
            self._dynamics().load(self.folder, resume)
            self.analysis.dynamics = self.dynamics
        self.health: Any = health
        self.analysis.health = health
        if health is None and resume is not None and self._health_options() is not None:
            self._health().load(self.folder, resume)

    # -- the layers' health ---------------------------------------------------------------------------
    def _health_options(self) -> Any:
        return next((s.options for s in self._stages if "health" in s.needs), None)

    def _health(self) -> Any:
        if self.health is None:
            from .health import Health

            options = self._health_options()
            if options is None:
                raise UserError("Analyzer.watch: no stage reads the layers' health; add 'health' to stages")
            self.health = self.analysis.health = Health(every=options.every, bins=options.bins)
            self.health.start_epoch()
        return self.health

    @contextlib.contextmanager
    def watch(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> Iterator[Analyzer]:
        """Record the layers' health while the block runs: every ``every``-th ``optimizer.step()`` of an epoch,
        each Linear/Conv layer's and activation module's outputs in the training forward pass (the model in
        train mode, autograd on — not an evaluation) and each parameter's gradient and update. Nothing waits
        for the device; :meth:`run` (or :meth:`end_epoch`) takes the epoch's numbers. The hooks are removed
        when the block ends, however it ends."""
        if not isinstance(model, nn.Module) or not isinstance(optimizer, torch.optim.Optimizer):
            raise UserError("Analyzer.watch: expected a torch.nn.Module and a torch.optim.Optimizer, got "
                            f"{type(model).__name__} and {type(optimizer).__name__}")
        self._watched = (model, optimizer)  # its classifier is kept each epoch, for the influence stage
        if self._health_options() is None and not any(s.name == "influence" for s in self._stages):
            raise UserError("Analyzer.watch: no stage reads what it records; add 'health' (or 'influence') to "
                            "stages")
        with self._health().watch(model, optimizer) if self._health_options() is not None \
                else contextlib.nullcontext():
            yield self

    # -- the dataset map ------------------------------------------------------------------------------
    def _dynamics(self) -> Any:
        if self.dynamics is None:
            from .dynamics import Dynamics

            if not len(self.data.train_y):
                raise UserError("Analyzer.observe: give train_data=(x_train, y_train) when making the Analyzer, "
                                "so that the batches' indices have labels to refer to")
            self.dynamics = Dynamics(self.data.train_y, len(self.data.classes))
            self.dynamics.start_epoch()
        return self.dynamics

    def observe(self, index: Tensor, logits: Tensor) -> None:
        """One training batch for the dataset map: ``index`` (B,) the positions of its examples in
        ``train_data``, ``logits`` (B, classes) from your training step's forward pass (detached here). No
        wait for the device; the epoch's numbers are taken by the next :meth:`run` (or :meth:`end_epoch`)."""
        self._dynamics().observe_checked(index, logits, "Analyzer.observe")

    def end_epoch(self, epoch: int) -> None:
        """Take the batches observed (and the steps watched) since the last epoch as ``epoch``'s (``run`` does
        this itself), and write them to the run's ``training/epoch_NNN.npz``."""
        from . import training

        recorded: dict[str, Any] = {}
        if self.health is not None and self.health.step > 0:
            numbers = self.health.end_epoch(epoch)
            if numbers is not None:
                recorded["health"] = numbers.record_data()
            self.health.start_epoch()
        if self.dynamics is not None and self.dynamics.handed > 0:
            self.dynamics.check_repeats(epoch, "Analyzer.observe")
            recorded["examples"] = self.dynamics.record_data(self.dynamics.end_epoch(epoch))
            self.dynamics.start_epoch()
            self.analysis.dynamics = self.dynamics
        watched = getattr(self, "_watched", None)
        if watched is not None and epoch > 0 and len(self.data.train_y):  # what the influence stage needs
            from .influence import classifier_lr, classifier_part

            with contextlib.suppress(UserError):  # no Linear or 1×1 conv classifier: nothing to keep
                part = classifier_part(watched[0], classifier_lr(watched[0], watched[1], self.features_layer),
                                       self.features_layer)
                if part is not None:
                    recorded["classifier"] = part
        if recorded:
            self.run_folder.sink.file(training.record_name(epoch), training.encode(epoch, recorded))

    def run(self, model: nn.Module, epoch: int, *, final: bool | None = None, train_loss: float | None = None,
            train_accuracy: float | None = None) -> AnalyzerResult:
        """Evaluate ``model`` on the evaluation data and run the stages for ``epoch`` (0 = before
        training); appends one row to metrics.jsonl. The model's mode and the RNG are left as they were."""
        was_training = model.training
        model.eval()
        # gradients are needed even when called under no_grad or inside Lightning's validation
        with torch.inference_mode(False), torch.enable_grad():
            return self._run(model, epoch, final, train_loss, train_accuracy, was_training)

    def _run(self, model: nn.Module, epoch: int, final: bool | None, train_loss: float | None,
             train_accuracy: float | None, was_training: bool) -> AnalyzerResult:
        if epoch > 0:
            self.end_epoch(epoch)
        try:
            analyzed = logits_model(model, self.probe.x)
            if not self._prepared:
                from ..models import check_model

                check_model(analyzed, type(model).__name__, self.probe.x, len(self.data.classes))
                self.analysis.initial_state = {k: v.detach().clone() for k, v in model.state_dict().items()} \
                    if epoch == 0 else None
                self.analysis.prepare(analyzed, self.data)
                self._prepared = True
            is_final = final if final is not None else (self.epochs is not None and epoch >= self.epochs)
            started = time.perf_counter()
            evaluation = evaluate(analyzed, self.data, self.probe, epoch, final=is_final, batch_size=self.batch_size,
                                  features=self.analysis.wants_features, features_layer=self.features_layer)
            row: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss, "eval_loss": evaluation.loss,
                                   "train_accuracy": train_accuracy, "eval_accuracy": evaluation.accuracy,
                                   "seconds": round(time.perf_counter() - started, 3)}
            sink = self.analysis.sink
            for tag, key in (("loss/train", "train_loss"), ("loss/eval", "eval_loss"),
                             ("accuracy/train", "train_accuracy"), ("accuracy/eval", "eval_accuracy")):
                if row[key] is not None:
                    sink.scalar(tag, row[key], epoch)
            results = self.analysis.run(evaluation, f"epoch_{epoch:03d}")
        finally:
            model.train(was_training)
        row.update(results.numbers)
        self.run_folder.append_metrics(row)
        return AnalyzerResult(row=row, summaries=results.summaries)

    @property
    def summaries(self) -> dict[str, Summary]:
        """The latest summary table of each stage that returned one (the trust table …)."""
        return dict(self.analysis.summaries)

    def close(self) -> None:
        """Draw every epoch's figures of a kind on one colour scale (from the records), wait for the figures
        still being drawn, then flush and close the TensorBoard files."""
        from .views import draw_run

        try:
            if self._stages:
                draw_run(self.run_folder.path, self.run_folder.sink, missing_only=True)
        finally:
            self.run_folder.close()

    def __enter__(self) -> Analyzer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
