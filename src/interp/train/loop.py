"""The training loop: epochs over in-memory tensors, and the events it emits to callbacks.

:class:`Trainer` knows nothing of run folders, stages or checkpoints. It trains, evaluates, and tells
its callbacks: ``on_start``, ``on_step`` (after every optimiser step), ``on_epoch_end`` (epoch 0 is the
evaluation before training, and goes through the same code as every later epoch) and ``on_end``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..analysis.dynamics import Dynamics
from ..analysis.evaluation import Evaluation, evaluate
from ..analysis.health import Health
from ..data import Data, Probe
from ..errors import NonFiniteLoss
from ..models import logits_of
from .distributed import Dist
from .speed import Speed

__all__ = ["NAN_CHECK_EVERY", "Callback", "Reporter", "SilentReporter", "Trainer", "train_epoch"]


class Reporter(Protocol):
    """Where training reports progress. The CLI passes a rich one; the default says nothing.

    ``progress`` yields ``advance(n, what=None)``: n more of ``total`` done, and (when given) a new
    description saying what is being done."""

    def progress(self, description: str, total: int) -> contextlib.AbstractContextManager[Callable[..., None]]:
        ...

    def epoch(self, row: dict[str, Any], epochs: int) -> None:
        ...

    def notice(self, message: str) -> None:
        ...


class SilentReporter:
    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        yield lambda n, what=None: None

    def epoch(self, row: dict[str, Any], epochs: int) -> None:
        pass

    def notice(self, message: str) -> None:
        pass


class Callback:
    """Override the events you need. ``row`` is the epoch's metrics.jsonl row: callbacks earlier in the
    list may add numbers to it for later ones."""

    def on_start(self, trainer: Trainer) -> None:
        pass

    def wants_features(self, trainer: Trainer, epoch: int) -> bool:
        """Whether this epoch's evaluation pass should keep the penultimate features."""
        return False

    def on_step(self, trainer: Trainer) -> None:
        pass

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any], evaluation: Evaluation) -> None:
        pass

    def on_end(self, trainer: Trainer) -> None:
        pass


# How many optimiser steps go by between two looks at the training losses (``train.on_nan: stop``): each
# look reads one number on the host, which waits for the device. Checked at the end of every epoch too.
NAN_CHECK_EVERY = 50


def train_epoch(model: nn.Module, data: Data, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
                batch_size: int, generator: torch.Generator, advance: Callable[[int], None] = lambda n: None,
                on_step: Callable[[], None] | None = None, on_nan: str = "stop",
                epoch: int = 0, dist: Dist | None = None, speed: Speed | None = None,
                lr_at: Callable[[int], float] | None = None,
                observe: Callable[[Tensor, Tensor], None] | None = None,
                count_correct: bool = True) -> tuple[float | None, float | None, int]:
    """One pass over the training tensors in a random order; returns (mean loss, accuracy or None, the
    number of batches skipped for a non-finite loss).

    No step waits for the device: the losses and predictions stay there until the epoch ends.
    ``on_nan="stop"`` looks at the losses every :data:`NAN_CHECK_EVERY` steps and at the end of the epoch,
    and raises :class:`NonFiniteLoss` naming the first NaN or infinite one; the steps in between have
    already run, so the weights in memory may be broken, but no checkpoint and no stage ever sees them
    (those run after the epoch's check). ``on_nan="skip_batch"`` must decide before each step, so it reads
    every loss on the host (one wait per step).

    Under torchrun (``dist``) every rank draws the same order (the generator is seeded alike), takes its
    part of each global batch of ``batch_size``, and the losses and accuracies are summed over ranks.
    ``lr_at(i)``: the learning rate of this epoch's ``i``-th step (from 0), set before it. ``observe(index,
    logits)``: each stepped batch's positions in the training set and the logits of its forward pass
    (:meth:`interp.analysis.dynamics.Dynamics.observe`). ``count_correct=False``: no accuracy (None) — the
    caller has every example's prediction from ``observe`` already, and saves an argmax per step."""
    dist = dist or Dist()
    speed = speed or Speed(contextlib.nullcontext, False, None, None)
    model.train()
    n = len(data.train_x)
    order = torch.randperm(n, generator=generator).to(data.device, non_blocking=True)
    losses, predicted, used = [], [], []  # kept on the device; summed once at the end
    skipped = checked = 0
    for step, start in enumerate(range(0, n, batch_size), start=1):
        whole = order[start:start + batch_size]
        if lr_at is not None:
            rate = lr_at(step - 1)
            for group in optimizer.param_groups:
                group["lr"] = rate
        if len(whole) < dist.world:  # a last batch too small to give every rank an image: left out by all
            advance(1)
            continue
        index = dist.shard(whole)
        if speed.augment is not None:  # drawn for the whole global batch, so every rank's generator moves alike
            images = speed.augment(data.train_x.index_select(0, whole), generator)
            images = images[dist.shard(torch.arange(len(whole), device=images.device))]
        else:
            images = data.train_x.index_select(0, index)  # index_select: a fraction of x[index]'s cost on a CPU
        x = speed.inputs(data.normalize(images))
        y = data.train_y.index_select(0, index)
        with speed.autocast():
            logits = logits_of(model(x))
        logits = logits.float()
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        if on_nan == "skip_batch" and not _finite(loss, dist):
            skipped += 1
            advance(1)
            continue
        if speed.scaler is not None:  # fp16: scaled gradients, a step skipped when they overflow
            speed.scaler.scale(loss).backward()
            speed.scaler.step(optimizer)
            speed.scaler.update()
        else:
            loss.backward()
            optimizer.step()
        losses.append(loss.detach())
        if observe is not None:
            observe(index, logits)
        if data.task == "classification" and count_correct:
            predicted.append(logits.detach().argmax(dim=1))
        used.append(index)
        if on_nan == "stop" and len(losses) - checked >= NAN_CHECK_EVERY:
            _stop_at_nonfinite(losses, checked, epoch, optimizer, dist)
            checked = len(losses)
        if on_step is not None:
            on_step()
        advance(1)
    if on_nan == "stop" and len(losses) > checked:
        _stop_at_nonfinite(losses, checked, epoch, optimizer, dist)
    if not used:
        return None, None, skipped
    sizes = torch.tensor([len(i) for i in used]).to(data.device, non_blocking=True)
    totals = [sizes.sum().double(), (torch.stack(losses) * sizes).sum().double()]
    if predicted:
        totals.append((torch.cat(predicted) == data.train_y[torch.cat(used)]).sum().double())
    summed = (dist.sum(torch.stack(totals)) if dist.enabled else torch.stack(totals)).tolist()  # one wait
    count = int(summed[0])
    mean_loss = summed[1] / count
    if len(summed) < 3:
        return mean_loss, None, skipped
    return mean_loss, int(summed[2]) / count, skipped


def _finite(loss: Tensor, dist: Dist) -> bool:
    """Whether this step's loss is finite, on every rank (so that every rank decides alike)."""
    if not dist.enabled:
        return bool(torch.isfinite(loss))
    return bool(dist.sum(torch.isfinite(loss).float().reshape(1)) == dist.world)


def _stop_at_nonfinite(losses: list[Tensor], start: int, epoch: int, optimizer: torch.optim.Optimizer,
                       dist: Dist) -> None:
    """Raise :class:`NonFiniteLoss` if any of ``losses[start:]`` (on any rank) is NaN or infinite: one wait
    for the device, and under torchrun one all-reduce, at the same steps on every rank. With ``on_nan="stop"``
    no step is left out (but a last batch too small for every rank, which comes after the rest), so the
    ``i``-th loss is step ``i + 1``."""
    bad = ~torch.isfinite(torch.stack(losses[start:]))
    if dist.enabled:
        bad = dist.sum(bad.float()) > 0
    if not bool(bad.any()):
        return
    first = start + int(bad.int().argmax())
    value = float(losses[first])
    lr = optimizer.param_groups[0]["lr"]
    at = f"the training loss is {value if not math.isfinite(value) else 'not finite on another process'}"
    raise NonFiniteLoss(f"{at} at epoch {epoch}, step {first + 1}; stopped at step {len(losses)}, before any checkpoint "
                        f"or stage saw it (checkpoints keep epoch {epoch - 1}). Lower train.lr (now {lr:g}), or "
                        "set train.on_nan=skip_batch")


class Trainer:
    """Trains ``model`` on ``data`` and emits events. ``analyzed`` is the model as the evaluation sees it
    (the same module, or one returning only the logits). ``optimizer`` may come as a function that makes it,
    called when it is first needed (after epoch 0's analysis): making the first torch optimizer imports
    ``torch._dynamo``, a second or more that would otherwise delay the run's first figures."""

    def __init__(self, model: nn.Module, data: Data, probe: Probe,
                 optimizer: torch.optim.Optimizer | Callable[[], torch.optim.Optimizer],
                 loss_fn: nn.Module, generator: torch.Generator, *, epochs: int, batch_size: int,
                 eval_batch_size: int, callbacks: list[Callback], reporter: Reporter | None = None,
                 analyzed: nn.Module | None = None, features_layer: str | None = None, on_nan: str = "stop",
                 dist: Dist | None = None, trained: nn.Module | None = None, speed: Speed | None = None,
                 lr_at: Callable[[int], float] | None = None, dynamics: Dynamics | None = None,
                 health: Health | None = None):
        self.model = model
        self.analyzed = analyzed if analyzed is not None else model
        self.data = data
        self.probe = probe
        self._optimizer = optimizer
        self.loss_fn = loss_fn
        self.generator = generator
        self.epochs = epochs
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.callbacks = callbacks
        self.reporter: Reporter = reporter or SilentReporter()
        self.features_layer = features_layer
        self.on_nan = on_nan
        self.dist = dist or Dist()
        self.speed = speed
        # what the optimiser steps through: DistributedDataParallel under torchrun, a compiled module
        self.trained = trained if trained is not None else model
        self.epoch = 0
        self.global_step = 0
        self.steps_per_epoch = -(-len(data.train_x) // batch_size)
        self.lr_at = lr_at  # the learning rate of each global step (from 0), or None: the optimiser's own
        # every training example's numbers per epoch, from the training steps' own logits (on every rank)
        self.dynamics = dynamics
        # every layer's activations, gradients and updates at sampled steps (on every rank)
        self.health = health

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        if not isinstance(self._optimizer, torch.optim.Optimizer):
            self._optimizer = self._optimizer()
        return self._optimizer

    def fit(self, start_epoch: int = 0, resuming: bool = False) -> None:
        """Epoch 0 (evaluation only) unless resuming, then epochs ``start_epoch + 1 … epochs``."""
        self.epoch = start_epoch
        self.global_step = start_epoch * self.steps_per_epoch
        for callback in self.callbacks:
            callback.on_start(self)
        first = start_epoch + 1 if resuming or start_epoch > 0 else 0
        for epoch in range(first, self.epochs + 1):
            self.run_epoch(epoch)
        for callback in self.callbacks:
            callback.on_end(self)

    def run_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        started = time.perf_counter()
        train_loss = train_accuracy = None
        skipped = 0
        if epoch > 0:
            step_callbacks = [c for c in self.callbacks if type(c).on_step is not Callback.on_step]
            first = (epoch - 1) * self.steps_per_epoch
            lr_at = self.lr_at
            epoch_lr = (lambda i: lr_at(first + i)) if lr_at is not None else None
            if self.dynamics is not None:
                self.dynamics.start_epoch()
            # when the dynamics follow every example, the training accuracy is theirs (the same argmax per example)
            whole = self.dynamics is not None and self.dynamics.tracked == self.dynamics.size
            if self.health is not None:
                self.health.start_epoch()
            watching = self.health.watch(self.model, self.optimizer) if self.health is not None \
                else contextlib.nullcontext()
            with watching, self.reporter.progress("training", self.steps_per_epoch) as advance:
                train_loss, train_accuracy, skipped = train_epoch(
                    self.trained, self.data, self.optimizer, self.loss_fn, self.batch_size, self.generator, advance,
                    (lambda: self._step(step_callbacks)) if step_callbacks else None, self.on_nan, epoch, self.dist,
                    self.speed, epoch_lr, self.dynamics.observe if self.dynamics is not None else None,
                    count_correct=not whole)
            if self.dynamics is not None:  # a collective under torchrun: every rank, before the evaluation
                numbers = self.dynamics.end_epoch(epoch, self.dist.sum if self.dist.enabled else None,
                                                  keep=self.dist.main)
                if whole and train_loss is not None:
                    train_accuracy = numbers.accuracy
            if self.health is not None:  # a collective under torchrun too
                self.health.end_epoch(epoch, self.dist.sum if self.dist.enabled else None, keep=self.dist.main)
        features = any(c.wants_features(self, epoch) for c in self.callbacks)
        if self.dist.enabled:  # only rank 0 has the callbacks: every rank must gather alike
            features = bool(self.dist.broadcast(features))
        eval_steps = -(-len(self.data.eval_x) // self.eval_batch_size)
        with self.reporter.progress("evaluation", eval_steps) as advance:
            evaluation = evaluate(self.analyzed, self.data, self.probe, epoch, final=epoch == self.epochs,
                                  batch_size=self.eval_batch_size, features=features,
                                  features_layer=self.features_layer, advance=advance, dist=self.dist)
        if not math.isfinite(evaluation.loss):
            raise NonFiniteLoss(f"the evaluation loss is {evaluation.loss} at epoch {epoch}: the model's outputs are "
                                f"not finite (checkpoints keep epoch {max(epoch - 1, 0)}). Lower train.lr (now "
                                f"{self.optimizer.param_groups[0]['lr']:g})")
        row: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss, "eval_loss": evaluation.loss,
                               "train_accuracy": train_accuracy, "eval_accuracy": evaluation.accuracy,
                               "seconds": round(time.perf_counter() - started, 3) if epoch else 0.0}
        if skipped:
            row["skipped_batches"] = skipped
            self.reporter.notice(f"epoch {epoch}: {skipped} batch(es) skipped for a non-finite loss")
        for callback in self.callbacks:
            callback.on_epoch_end(self, row, evaluation)

    def _step(self, callbacks: list[Callback]) -> None:
        self.global_step += 1
        for callback in callbacks:
            callback.on_step(self)
