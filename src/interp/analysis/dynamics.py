"""Per-example training dynamics: what the model said about every training example at every epoch.

The trainer hands :meth:`Dynamics.observe` each batch's dataset indices and the logits of its own forward
pass (no extra pass). They are copied into one (examples, classes) buffer on the device — one
``index_copy_`` per step, no wait for the device — and at the end of the epoch reduced, in a few
operations for the whole epoch, to three numbers per example: the probability of its given label, its
margin (given label's logit − the largest other logit) and whether it was predicted right (plus the
predicted class). Those move to the host once per epoch, compactly (float16, bool), and are kept as
the ``examples`` part of the run's ``training/epoch_NNN.npz`` records.

Memory: the buffer holds ``tracked × classes`` float32 values, at most :data:`CELLS` (2**27, 512 MiB):
every example of a dataset up to 13.4 M examples with 10 classes, 134,217 with 1,000 classes. A larger
dataset has a fixed random subset of that many examples followed (seeded; the record names them); the
others are not recorded. The history on the host takes 6 bytes per tracked example and epoch.

:func:`cartography` turns the history into per-example columns: confidence, variability, correctness,
forgetting events, area under the margin, the first epoch from which it stays learned, its region, and
the label-issue score.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CELLS", "REGIONS", "AMBIGUOUS_VARIABILITY", "HARD_CONFIDENCE", "Dynamics", "EpochDynamics",
           "History", "Recorded", "cartography", "load_history", "read_dynamics"]

CELLS = 1 << 27  # tracked examples × classes held on the device during an epoch (float32: 512 MiB)
REGIONS = ("easy", "ambiguous", "hard")
# The regions of the data map (Swayamdipta et al. 2020, fig. 1): ambiguous = the probability of the given label
# swings across epochs (standard deviation ≥ 0.2; 0.5 is the largest possible); otherwise hard to learn when
# it is on average below one half, easy when above.
AMBIGUOUS_VARIABILITY = 0.2
HARD_CONFIDENCE = 0.5
PART = "examples"  # the part of the run's training/epoch_NNN.npz records


@dataclass
class EpochDynamics:
    """One epoch's numbers for the tracked examples (NaN / False / -1 for one its forward passes missed)."""

    epoch: int
    prob: np.ndarray  # (tracked,) float16: softmax probability of the given label
    margin: np.ndarray  # (tracked,) float16: given label's logit − the largest other logit
    correct: np.ndarray  # (tracked,) bool: predicted the given label
    predicted: np.ndarray  # (tracked,) int16 (int32 past 32,767 classes; -1: not seen this epoch)

    @property
    def accuracy(self) -> float:
        """The share of the examples seen this epoch that were predicted right."""
        seen = int((self.predicted >= 0).sum())
        return int(self.correct.sum()) / seen if seen else float("nan")

    def record_data(self, index: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        return {"index": index, "label": labels, "prob": self.prob, "margin": self.margin, "correct": self.correct,
                "predicted": self.predicted}


@dataclass
class History:
    """The epochs recorded so far, for the tracked examples ``index`` (positions in the training set)."""

    index: np.ndarray  # (tracked,) int32 (int64 past 2**31 examples)
    labels: np.ndarray  # (tracked,) int32: the given labels
    size: int  # examples in the training set
    epochs: list[EpochDynamics] = field(default_factory=list)

    def add(self, epoch: EpochDynamics) -> None:
        self.epochs = [e for e in self.epochs if e.epoch < epoch.epoch] + [epoch]

    def until(self, epoch: int) -> list[EpochDynamics]:
        return [e for e in self.epochs if e.epoch <= epoch]


class Dynamics:
    """Records every training example's logits from the trainer's forward passes, one epoch at a time.

    ``labels``: the training set's given labels (N,), on the device the logits come from; ``classes``: how
    many. Call :meth:`observe` for every batch (its indices into the training set and its logits), then
    :meth:`end_epoch`. ``cells`` caps tracked examples × classes (see the module's note)."""

    def __init__(self, labels: Any, classes: int, *, cells: int = CELLS, seed: int = 0):
        import torch

        n = len(labels)
        tracked = min(n, max(1, cells // max(classes, 1)))
        device = labels.device
        self.size, self.classes = n, classes
        if tracked < n:  # a fixed random subset; the others go to one spare row that is never read
            chosen = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:tracked].sort().values
            self.slot: Any = torch.full((n,), tracked, dtype=torch.long)
            self.slot[chosen] = torch.arange(tracked)
            self.slot = self.slot.to(device)
            index = chosen
        else:
            self.slot = None
            index = torch.arange(n)
        self.index = index.to(device)
        self.labels = labels.long().index_select(0, self.index)
        self.buffer = torch.full((tracked + (self.slot is not None), classes), float("nan"), device=device)
        self.handed = 0
        # compact in the records: positions and labels as int32, predictions as int16 up to 32,767 classes
        self.predicted_dtype = torch.int16 if classes < (1 << 15) else torch.int32
        self.history = History(index=index.numpy().astype(np.int32 if n < (1 << 31) else np.int64),
                               labels=self.labels.cpu().numpy().astype(np.int32), size=n)

    @property
    def tracked(self) -> int:
        return len(self.index)

    def start_epoch(self) -> None:
        self.buffer.fill_(float("nan"))
        self.handed = 0  # examples handed to observe_checked since the epoch began

    def observe(self, index: Any, logits: Any) -> None:
        """One batch: ``index`` (B,) positions in the training set, ``logits`` (B, classes). No host sync."""
        rows = index if self.slot is None else self.slot.index_select(0, index)
        self.buffer.index_copy_(0, rows, logits.detach().float())

    def observe_checked(self, index: Any, logits: Any, who: str) -> None:
        """:meth:`observe` for batches a user's loop hands over (the Analyzer, the Lightning callback; ``who``
        names it in messages): their types and shapes checked, and, once per epoch, that the indices are
        positions in the training set; a mistake is a :class:`~interp.errors.UserError`."""
        import torch

        from ..errors import UserError

        def shape(value: Any) -> str:
            return f"{tuple(value.shape)} {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__

        if not isinstance(index, torch.Tensor) or index.dtype not in (torch.int64, torch.int32) or index.dim() != 1 \
                or not isinstance(logits, torch.Tensor) or logits.shape != (len(index), self.classes):
            raise UserError(f"{who}: the dataset map expects a batch's index, a 1-d integer tensor, and its logits, "
                            f"(len(index), {self.classes}); got {shape(index)} and {shape(logits)}")
        index = index.to(self.index.device, torch.long)
        if self.handed == 0 and len(index):  # one look per epoch (a wait for the device)
            low, high = int(index.min()), int(index.max())
            if low < 0 or high >= self.size:
                raise UserError(f"{who}: index {low if low < 0 else high} is outside the training set (0 … "
                                f"{self.size - 1}); pass each example's position in it (interp.data.WithIndex "
                                "brings it along)")
        self.observe(index, logits.to(self.index.device))
        self.handed += len(index)

    def check_repeats(self, epoch: int, who: str) -> None:
        """Refuse an epoch whose batches repeated an index (a loader numbering each batch from 0, an iterable
        dataset): their numbers would be wrong. The epoch is dropped first."""
        from ..errors import UserError

        seen = int((~self.buffer[: self.tracked, 0].isnan()).sum())
        if self.handed > seen:
            handed = self.handed
            self.start_epoch()
            raise UserError(f"{who}: {handed} examples were handed over in epoch {epoch} but only {seen} different "
                            "indices: the indices repeat within an epoch, so they are not stable positions in the "
                            "training set (wrap the dataset with interp.data.WithIndex)")

    def end_epoch(self, epoch: int, total: Callable[[Any], Any] | None = None, keep: bool = True) -> EpochDynamics:
        """The epoch's numbers per tracked example, on the host. ``total``: a sum over processes (torchrun,
        Lightning's DDP; every process observed its own share of the examples) — a collective, so every
        process calls this. ``keep``: add them to :attr:`history` (the process that writes the run)."""
        import torch

        logits = self.buffer[: self.tracked]
        unseen = torch.isnan(logits[:, 0])
        if total is not None:
            both = torch.cat([torch.where(unseen[:, None], 0.0, logits), (~unseen)[:, None].float()], dim=1)
            both = total(both)
            unseen = both[:, -1] == 0
            logits = both[:, :-1] / both[:, -1:].clamp(min=1)
        labels = self.labels[:, None]
        # each other logit relative to the given label's: the margin is minus their largest, the given label's
        # softmax probability 1 / (1 + Σ exp(them)) — in place, a few operations for the whole epoch
        others = logits.sub(logits.gather(1, labels)).scatter_(1, labels, float("-inf"))
        top, runner_up = others.max(dim=1)
        correct = top < 0  # the given label's logit above every other (False for an unseen one: NaN or all 0)
        predicted = torch.where(correct, self.labels, runner_up)  # logits.argmax, without a second pass
        both = torch.stack([others.exp_().sum(dim=1).add_(1).reciprocal_(), top.neg_()])  # (prob, margin)
        if bool(unseen.any()):  # one look per epoch: an example a skipped batch held gets NaN, -1
            both[:, unseen] = float("nan")
            predicted[unseen] = -1
        prob, margin = both.half().cpu().numpy()
        out = EpochDynamics(epoch=epoch, prob=prob, margin=margin, correct=correct.cpu().numpy(),
                            predicted=predicted.to(self.predicted_dtype).cpu().numpy())
        if keep:
            self.history.add(out)
        return out

    def record_data(self, epoch: EpochDynamics) -> dict[str, Any]:
        """One epoch's numbers as the ``examples`` part of the run's ``training/epoch_NNN.npz``."""
        return {**epoch.record_data(self.history.index, self.history.labels), "size": self.size}

    def load(self, run: Path | str, through: int) -> list[int]:
        """Take the epochs ``1 … through`` a run recorded (a resumed run goes on from them); returns the
        epochs found."""
        loaded = load_history(run, through, self.history.index)
        for epoch in loaded:
            self.history.add(epoch)
        return [e.epoch for e in loaded]


@dataclass
class Recorded:
    """A run's recorded dynamics read back from its records — what the stages read of a :class:`Dynamics`
    (``interp analyze``)."""

    history: History


def read_dynamics(run: Path | str, through: int | None = None) -> Recorded | None:
    """The epochs ``run`` recorded (through ``through``), or None when it recorded none."""
    from .training import parts

    first = next(parts(run, PART), None)
    if first is None:
        return None
    first = first[1]
    index = np.asarray(first["index"])
    history = History(index=index, labels=np.asarray(first["label"]), size=int(first.get("size", len(index))))
    for epoch in load_history(run, through, index):
        history.add(epoch)
    return Recorded(history) if history.epochs else None


def load_history(run: Path | str, through: int | None = None, index: np.ndarray | None = None) -> list[EpochDynamics]:
    """The per-epoch dynamics ``run`` recorded (epochs ≤ ``through``), read without pickle; with ``index``,
    only those that follow the same examples."""
    from .training import parts

    out = []
    for epoch, data in parts(run, PART, through):
        if index is not None and not np.array_equal(np.asarray(data["index"]), index):
            continue
        out.append(EpochDynamics(epoch, np.asarray(data["prob"]), np.asarray(data["margin"]),
                                 np.asarray(data["correct"], dtype=bool), np.asarray(data["predicted"])))
    return out


def cartography(epochs: Iterable[EpochDynamics]) -> dict[str, np.ndarray]:
    """Per-example columns from the epochs recorded (in order). An epoch in which an example was not seen
    (a batch skipped for a non-finite loss) is left out of its means.

    - ``confidence``, ``variability``: mean and standard deviation (population) of the given label's
      probability; ``correctness``: the fraction of epochs it was predicted right (Swayamdipta et al. 2020).
    - ``forgetting``: forgetting events, epochs where it went from right to wrong (Toneva et al. 2019).
    - ``aum``: the area under the margin, the mean margin (Pleiss et al. 2020).
    - ``learned``: the first epoch from which it is predicted right at every later epoch; -1: not (yet).
    - ``region``: 0 easy, 1 ambiguous, 2 hard to learn (see :data:`REGIONS`).
    - ``score``: the label-issue score, −AUM: the more the other classes beat the given label during
      training, the likelier the label is wrong. ``flagged``: AUM < 0 and predicted wrong at the last
      epoch — on average over training another class's logit beat the given label's, and still does (on
      the bundled sample after 10 epochs: 1.9 % of the clean labels; with 10 % of them shifted, 599
      flagged, 80 % of them shifted ones, 96 % of the shifted ones flagged).
    - ``predicted``: the class predicted at the last epoch.
    """
    epochs = list(epochs)
    if not epochs:
        raise ValueError("no epochs recorded")
    prob = np.stack([e.prob for e in epochs]).astype(np.float32)  # (E, N)
    margin = np.stack([e.margin for e in epochs]).astype(np.float32)
    correct = np.stack([e.correct for e in epochs])
    seen = ~np.isnan(prob)
    count = seen.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.nansum(prob, axis=0) / count
        variability = np.sqrt(np.nansum((prob - confidence) ** 2, axis=0) / count)
        aum = np.nansum(margin, axis=0) / count
        correctness = (correct & seen).sum(axis=0) / count
    forgetting = (correct[:-1] & ~correct[1:] & seen[1:]).sum(axis=0)
    streak = correct[::-1].cumprod(axis=0).sum(axis=0)  # right at how many of the last epochs in a row
    numbers = np.array([e.epoch for e in epochs])
    learned = np.where(streak > 0, numbers[len(epochs) - np.maximum(streak, 1)], -1)
    region = np.where(variability >= AMBIGUOUS_VARIABILITY, 1, np.where(confidence < HARD_CONFIDENCE, 2, 0))
    return {"confidence": confidence.astype(np.float32), "variability": variability.astype(np.float32),
            "correctness": correctness.astype(np.float32), "forgetting": forgetting.astype(np.int32),
            "aum": aum.astype(np.float32), "learned": learned.astype(np.int32), "region": region.astype(np.int8),
            "score": (-aum).astype(np.float32), "flagged": (aum < 0) & ~correct[-1],
            "predicted": epochs[-1].predicted.astype(np.int32)}
