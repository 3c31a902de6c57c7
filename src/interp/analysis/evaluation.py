"""One epoch's evaluation, computed once and queried by every stage.

:func:`evaluate` runs the model over the evaluation set once — the trainer's own evaluation pass — and
keeps the logits, the per-item losses and (when a stage wants them) the penultimate features, caught by
a forward hook on one layer. Stages ask the :class:`Evaluation` for them instead of running the model
again: ``logits()``, ``probs()``, ``predictions()``, ``losses()``, ``features()``, ``top_losses(k)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import Data, Probe
from ..models import features_layer, logits_of

__all__ = ["Evaluation", "evaluate", "features_of", "item_losses"]


@contextlib.contextmanager
def _capture_input(module: nn.Module | None) -> Iterator[list[Tensor]]:
    caught: list[Tensor] = []
    if module is None:
        yield caught
        return

    def hook(_module: nn.Module, inputs: tuple[Any, ...]) -> None:
        caught.append(inputs[0].detach().flatten(1))  # (B, D)

    handle = module.register_forward_pre_hook(hook)
    try:
        yield caught
    finally:
        handle.remove()


@dataclass
class Evaluation:
    """A model's results on the evaluation data at one epoch, plus the fixed probe batch.

    ``model`` returns logits (see :func:`logits_model`) and is in eval mode while stages run."""

    model: nn.Module
    data: Data
    probe: Probe
    epoch: int
    final: bool
    batch_size: int = 1000
    features_layer: str | None = None
    _logits: Tensor | None = None
    _losses: Tensor | None = None
    _features: Tensor | None = None

    # -- what stages ask for ----------------------------------------------------------------------
    def logits(self) -> Tensor:
        """(N, classes) for the whole evaluation set."""
        if self._logits is None:
            self._compute(with_features=False)
        assert self._logits is not None
        return self._logits

    def probs(self) -> Tensor:
        return torch.softmax(self.logits(), dim=1)

    def predictions(self) -> Tensor:
        return self.logits().argmax(dim=1)

    def losses(self) -> Tensor:
        """Per-item loss (N,): cross-entropy for classes, squared error summed over outputs otherwise."""
        if self._losses is None:
            self._losses = item_losses(self.logits(), self.data.eval_y, self.data.task)
        return self._losses

    def features(self) -> Tensor:
        """Penultimate features (N, D): from the evaluation pass when it kept them, else one pass here."""
        if self._features is None:
            self._compute(with_features=True)
        assert self._features is not None
        return self._features

    def top_losses(self, k: int) -> tuple[Tensor, Tensor]:
        """The ``k`` largest per-item losses and their positions in the evaluation set."""
        return self.losses().topk(min(k, len(self.losses())))

    @property
    def loss(self) -> float:
        return float(self.losses().mean())

    @property
    def accuracy(self) -> float | None:
        if self.data.task != "classification":
            return None
        return int((self.predictions() == self.data.eval_y).sum()) / len(self.data.eval_y)

    # -- computing ---------------------------------------------------------------------------------
    @torch.no_grad()
    def _compute(self, with_features: bool, advance: Callable[[int], None] = lambda n: None,
                 dist: Any = None) -> None:
        """One pass over the evaluation set; under torchrun (``dist``) each rank takes a contiguous part and
        the parts are gathered, in order, on every rank."""
        was_training = self.model.training
        self.model.eval()
        layer = features_layer(self.model, self.features_layer)[1] if with_features else None
        positions = torch.arange(len(self.data.eval_x), device=self.data.eval_x.device)
        mine = dist.shard(positions) if dist is not None else positions
        first, count = (int(mine[0]), len(mine)) if len(mine) else (0, 0)  # a contiguous range: sliced, not copied
        outputs = []
        try:
            with _capture_input(layer) as caught:
                for start in range(first, first + count, self.batch_size):
                    stop = min(start + self.batch_size, first + count)
                    x = self.data.normalize(self.data.eval_x[start:stop])
                    outputs.append(logits_of(self.model(x)))
                    advance(1)
        finally:
            self.model.train(was_training)
        logits = torch.cat(outputs) if outputs else torch.zeros(0, self.data.num_outputs, device=positions.device)
        self._logits = dist.gather(logits) if dist is not None else logits
        self._losses = None
        if with_features:
            features = torch.cat(caught) if caught else torch.zeros(0, 0, device=positions.device)
            self._features = dist.gather(features) if dist is not None else features


@torch.no_grad()
def features_of(model: nn.Module, data: Data, x: Tensor, index: Tensor, layer: str | None = None,
                batch_size: int = 1000) -> Tensor:
    """The penultimate features (N, D) of ``x[index]`` (uint8 pixels or features, normalized here), caught
    as the input of the classifier layer (``layer``: another one by name), in batches; the model in eval mode."""
    was_training = model.training
    model.eval()
    try:
        with _capture_input(features_layer(model, layer)[1]) as caught:
            for start in range(0, len(index), batch_size):
                model(data.normalize(x.index_select(0, index[start:start + batch_size])))
    finally:
        model.train(was_training)
    return torch.cat(caught) if caught else torch.zeros(0, 0)


def item_losses(logits: Tensor, targets: Tensor, task: str) -> Tensor:
    if task == "classification":
        return F.cross_entropy(logits, targets, reduction="none")
    return ((logits - targets) ** 2).flatten(1).mean(dim=1)


def evaluate(model: nn.Module, data: Data, probe: Probe, epoch: int, *, final: bool = False,
             batch_size: int = 1000, features: bool = False, features_layer: str | None = None,
             advance: Callable[[int], None] = lambda n: None, dist: Any = None) -> Evaluation:
    """One pass over the evaluation set (keeping penultimate features when ``features``); sharded over
    the ranks and gathered when ``dist`` (a :class:`interp.train.distributed.Dist`) is given."""
    evaluation = Evaluation(model=model, data=data, probe=probe, epoch=epoch, final=final, batch_size=batch_size,
                            features_layer=features_layer)
    evaluation._compute(with_features=features, advance=advance, dist=dist if dist is not None and dist.enabled
                        else None)
    return evaluation
