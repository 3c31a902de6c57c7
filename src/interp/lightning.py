"""The analysis stages in your own Lightning loop (``pip install "interp[lightning]"``).

```python
from interp.lightning import InterpCallback
callback = InterpCallback("save/lit", classes=["a", "b", "c", "d"], stages=["confusion", "saliency", "gradcam"])
lightning.Trainer(max_epochs=2, callbacks=[callback]).fit(module, train_loader, val_loader)
```

**When.** The stages run at the end of every validation that closes a training epoch (epoch ``N`` = after
``N`` training epochs), and once for epoch 0 — the model before training — with the weights the module had at
``on_train_start``: they are copied then (to the CPU) and swapped in for that one analysis, as soon as the
evaluation sample exists (the end of the first validation), then swapped back. A validation in the middle of
an epoch (``val_check_interval < 1``) is not analysed. The analysis runs on rank 0; the LightningModule's
forward must return logits (or a tuple with the logits first, or a dict with ``logits``).

**The evaluation data** is a fixed sample of at most ``eval_limit`` (default 2,000) items of the first
validation dataloader, drawn uniformly at random (seeded) across the whole of it from the batches Lightning
hands the callback during the first validation run of the fit (``on_validation_batch_end``; the sanity check's
few batches are not used), then kept for every epoch. A batch is ``(inputs, labels, …)`` or a dict with
inputs and labels (see :data:`INPUT_KEYS`, :data:`LABEL_KEYS`). A resumed fit draws it again, the same when
the validation order is the same.

**Where the numbers go.** The run folder (``folder``; ``folder-2`` … when it exists) gets what ``interp
train`` writes for those stages — metrics.jsonl, records, figures, embeddings — except TensorBoard events:
the scalars (``loss/eval``, ``accuracy/eval``, ``loss/train`` from a logged ``train_loss``, every stage's
numbers) go to the trainer's loggers instead, named ``interp/<tag>`` (``log_prefix``), at the trainer's
``global_step`` (epoch 0's at the step training started from), so they sit beside the module's own logs in
TensorBoard, CSV, W&B … (histograms are not sent). Without loggers they are in metrics.jsonl only. ``interp
report`` and ``interp draw`` work on the run folder.

**The dataset map** (the ``dataset_map`` stage: every training example's confidence, variability,
forgetting and area under the margin over the epochs, from the training steps' own logits — no extra
forward pass). The contract:

1. every training batch carries its examples' positions in the training set: ``(x, y, index)`` — wrap the
   dataset in :class:`interp.data.WithIndex` — or a dict with an ``"index"`` entry;
2. ``training_step`` returns a dict with the loss and the logits of its forward pass:
   ``return {"loss": loss, "logits": logits}`` (shape ``(batch, classes)``);
3. the callback knows the training set's inputs and labels (for the labels the indices refer to, and the
   images of the likeliest label issues): ``InterpCallback(..., train_data=(x_train, y_train))``, or,
   without it, the training dataloader's dataset when it is a ``TensorDataset`` (wrapped or not in
   ``WithIndex``), read from ``trainer.train_dataloader`` at ``on_train_start``.

Every batch's ``(index, logits)`` is then copied into one buffer on the device in ``on_train_batch_end``
(no wait for the device) and reduced once per epoch to ``training/epoch_NNN.npz``, the same records the
:class:`interp.Analyzer` and ``interp train`` write. When a piece is missing the ``dataset_map`` stage is
skipped with one notice saying which; no numbers are made up. A batch for which ``training_step`` returned
``None`` (skipped) is simply not recorded.

**Several processes.** Under Lightning's DDP strategy every process samples its share of the validation
batches and rank 0 gathers them (``trainer.strategy.all_gather``; the padding of a ``DistributedSampler``
may repeat an item or two); every process records the training batches it saw and the epoch's numbers are
summed over the processes (``trainer.strategy.reduce``) before rank 0 writes them. Strategies that shard the weights (FSDP, DeepSpeed) are not supported: epoch 0's weight
swap and the analysis need the whole model in rank 0 (the callback refuses them when the fit starts).

**Resuming.** The callback's state (the run folder, the last analysed epoch and the last recorded one) is
in the checkpoint (``state_dict``); ``trainer.fit(..., ckpt_path=...)`` continues the same run folder
(:class:`interp.Analyzer` with ``resume=``): metrics.jsonl keeps its rows up to that epoch and the dataset
map goes on from the recorded epochs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from .analysis.api import Analyzer, labelled_pair
from .errors import UserError

__all__ = ["INPUT_KEYS", "LABEL_KEYS", "InterpCallback"]

INPUT_KEYS = ("x", "image", "images", "input", "inputs")
LABEL_KEYS = ("y", "label", "labels", "target", "targets")
# the Analyzer's keywords the callback sets itself
_OWN = frozenset({"eval_data", "classes", "mean", "std", "stages", "epochs", "notice", "train_data", "resume",
                  "tensorboard", "scalars", "dynamics", "health"})


def _pair(batch: Any) -> tuple[Tensor, Tensor]:
    """(inputs, labels) from a batch: a tuple/list (inputs first, labels second) or a dict."""
    if isinstance(batch, tuple | list) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, dict):
        x = next((batch[k] for k in INPUT_KEYS if k in batch), None)
        y = next((batch[k] for k in LABEL_KEYS if k in batch), None)
        if x is not None and y is not None:
            return x, y
    raise UserError("InterpCallback: a validation batch must be (inputs, labels, …) or a dict with one of "
                    f"{', '.join(INPUT_KEYS)} and one of {', '.join(LABEL_KEYS)}")


def _index_of(batch: Any) -> Any:
    """The examples' positions a training batch carries: ``(x, y, index, …)`` or a dict's ``"index"``."""
    if isinstance(batch, dict):
        return batch.get("index")
    if isinstance(batch, tuple | list) and len(batch) >= 3:
        return batch[2]
    return None


def _dataset_tensors(loader: Any) -> tuple[Tensor, Tensor] | None:
    """(x, y) of a training dataloader whose dataset is a TensorDataset, wrapped or not in WithIndex."""
    from .data import WithIndex

    dataset = getattr(loader, "dataset", None) if isinstance(loader, DataLoader) else None
    if isinstance(dataset, WithIndex):
        dataset = dataset.dataset
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return dataset.tensors[0], dataset.tensors[1]
    return None


class _Sample:
    """A uniform random sample of at most ``size`` items (all with ``size=None``) of a stream of batches,
    reservoir sampling with a seeded generator: item ``t`` (from 0) takes a random slot of ``0 … t`` when that
    slot is one of the ``size``. Held on the CPU; :meth:`tensors` gives them in the order they came."""

    def __init__(self, size: int | None, seed: int):
        self.size = size
        self.seen = 0
        self.generator = torch.Generator().manual_seed(seed)
        self.x: Tensor | None = None
        self.y: Tensor | None = None
        self.at: Tensor | None = None  # each slot's position in the stream
        self.parts: list[tuple[Tensor, Tensor]] = []  # size=None: every batch

    def add(self, x: Tensor, y: Tensor) -> None:
        n = len(x)
        if n == 0:
            return
        if len(y) != n:
            raise UserError(f"InterpCallback: a validation batch has {n} inputs and {len(y)} labels")
        if self.size is None:
            self.parts.append((x.detach().cpu().clone(), y.detach().cpu().clone()))
            self.seen += n
            return
        position = torch.arange(self.seen, self.seen + n)
        drawn = (torch.rand(n, generator=self.generator, dtype=torch.float64) * (position + 1)).long()
        slot = torch.where(position < self.size, position, drawn)
        chosen = torch.nonzero(slot < self.size)[:, 0]
        self.seen += n
        if not len(chosen):
            return
        slots = slot[chosen].numpy()
        _, last = np.unique(slots[::-1], return_index=True)  # a slot drawn twice: the later item takes it
        chosen = chosen[torch.as_tensor(len(slots) - 1 - last)]
        where = slot[chosen]
        if self.x is None:
            self.x = torch.empty((self.size, *x.shape[1:]), dtype=x.dtype)
            self.y = torch.empty((self.size, *y.shape[1:]), dtype=y.dtype)
            self.at = torch.full((self.size,), -1, dtype=torch.long)
        assert self.y is not None and self.at is not None
        self.x[where] = x.detach()[chosen.to(x.device)].cpu()
        self.y[where] = y.detach()[chosen.to(y.device)].cpu()
        self.at[where] = position[chosen]

    def tensors(self) -> tuple[Tensor, Tensor] | None:
        if self.size is None:
            if not self.parts:
                return None
            return torch.cat([x for x, _ in self.parts]), torch.cat([y for _, y in self.parts])
        if self.x is None or self.y is None or self.at is None:
            return None
        filled = min(self.seen, self.size)
        order = torch.argsort(self.at[:filled])
        return self.x[:filled][order], self.y[:filled][order]


class InterpCallback(Callback):
    """Runs interp's analysis stages on a sample of the validation data during ``Trainer.fit`` (see the
    module's notes for when, on what, and the dataset map's contract).

    ``classes``: the class names, in label order. ``mean``/``std``: the normalization the inputs went
    through (optional, for drawing; without them each image is scaled for display). ``stages``: names or
    ``{name: {options}}`` (default: the default stages). ``eval_limit``: the most validation items analysed
    (a seeded random sample across the first validation dataloader; None: all of them). ``train_data``:
    ``(x_train, y_train)`` for the dataset map. ``log_prefix``: put before every scalar's name in the
    trainer's loggers. Other keywords go to :class:`interp.Analyzer` (``probe_per_class``, ``seed``,
    ``batch_size``, ``features_layer``, ``methods``, ``device``, ``drawing_worker``).

    After the first validation of a fit, :attr:`eval_data` is the sample analysed (``(x, y)`` on the CPU, in
    the order the validation dataloader gave them) and :attr:`run_folder` the run folder.
    """

    def __init__(self, folder: str | Path, classes: Sequence[str], *, stages: list[Any] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 eval_limit: int | None = 2000, train_data: tuple[Tensor, Tensor] | None = None,
                 log_prefix: str = "interp/", notice: Callable[[str], None] = print, **analyzer_options: Any):
        import inspect

        from .attribution import check_methods
        from .stages import check_stages

        built = check_stages(stages, "stages")  # a typo fails when the callback is made, not after an epoch
        check_methods(analyzer_options.get("methods"), "methods")
        known = set(inspect.signature(Analyzer).parameters) - _OWN - {"folder"}
        wrong = sorted(set(analyzer_options) - known)
        if wrong:
            raise UserError(f"InterpCallback: unknown option {', '.join(map(repr, wrong))} (the Analyzer's are "
                            f"{', '.join(sorted(known))})")
        if eval_limit is not None and (isinstance(eval_limit, bool) or not isinstance(eval_limit, int)
                                       or eval_limit < 1):
            raise UserError(f"InterpCallback: eval_limit must be a positive whole number or None, not {eval_limit!r}")
        if train_data is not None and (not isinstance(train_data, tuple | list) or len(train_data) != 2
                                       or not all(isinstance(t, Tensor) for t in train_data)):
            raise UserError("InterpCallback: train_data must be a pair of tensors (x_train, y_train)")
        self.folder = Path(folder)
        self.classes = list(classes)
        self.stages = stages
        self.mean, self.std = mean, std
        self.eval_limit = eval_limit
        self.train_data = train_data
        self._classifier_recorded = 0  # the last epoch whose classifier went into its training record
        self.log_prefix = log_prefix
        self.notice = notice
        self.analyzer_options = analyzer_options
        self.analyzer: Analyzer | None = None
        self._map_cells = min((getattr(s.options, "cells", 0) for s in built if "dynamics" in s.needs), default=0)
        self._health_options = next((s.options for s in built if "health" in s.needs), None)
        self._reset()
        self._resume: dict[str, Any] | None = None  # the state a checkpoint brought (load_state_dict)
        self._folder: Path | None = None  # the run folder, once made
        self._epoch: int | None = None  # the last epoch analysed
        self._recorded: int | None = None  # the last epoch of the dataset map recorded
        self._health_recorded: int | None = None  # the last epoch of the layers' health recorded

    def _reset(self) -> None:
        """What one fit builds up."""
        self._sample: _Sample | None = None
        self.eval_data: tuple[Tensor, Tensor] | None = None  # the sample, fixed once the first validation ended
        self._initial: dict[str, Tensor] | None = None  # the weights at on_train_start, for epoch 0
        self._start_step = 0
        self._recorder: Any = None  # the dataset map's Dynamics, on every process
        self._health: Any = None  # the layers' Health, on every process
        self._watching: Any = None  # its hooks (a context entered at on_train_start, left when the fit ends)
        self._unwritten: list[tuple[str, bytes]] = []  # records not yet written (no run folder yet)
        self._map_problem: str | None = None  # why there is no dataset map, once noticed
        self._scalars: dict[str, float] = {}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(folder=str(self.folder))

    @property
    def run_folder(self) -> Path | None:
        """Where the analysis went (``folder``, or ``folder-2`` … when it already existed)."""
        return self._folder

    # -- checkpoints -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"folder": None if self._folder is None else str(self._folder), "epoch": self._epoch,
                "recorded": self._recorded, "health": self._health_recorded}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = dict(state_dict)
        self._epoch, self._recorded = state_dict.get("epoch"), state_dict.get("recorded")
        self._health_recorded = state_dict.get("health")
        if state_dict.get("folder") is not None:
            self._folder = Path(state_dict["folder"])

    # -- Lightning hooks -------------------------------------------------------------------------------
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy

        if isinstance(trainer.strategy, FSDPStrategy | DeepSpeedStrategy | ModelParallelStrategy):
            raise UserError(f"InterpCallback: {type(trainer.strategy).__name__} shards the weights over the "
                            "processes; the analysis needs the whole model in rank 0 (use a DDP strategy, or "
                            "one process)")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._reset()
        self._start_step = trainer.global_step
        if self._resume is None:
            if trainer.ckpt_path is not None and trainer.is_global_zero:
                self.notice(f"InterpCallback: {trainer.ckpt_path} holds no state of this callback: the analysis "
                            "starts a new run folder, without epoch 0 (these are not the initial weights)")
            self._folder = self._epoch = self._recorded = self._health_recorded = None
        if self._resume is None and trainer.ckpt_path is None and trainer.is_global_zero:
            self._initial = {k: v.detach().to("cpu", copy=True) for k, v in pl_module.state_dict().items()}
        self._start_map(trainer, pl_module)
        self._start_health(trainer, pl_module)

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.eval_data is None and self._sample is None and self._fitting(trainer):
            limit = self.eval_limit
            share = None if limit is None else math.ceil(limit / trainer.world_size)
            self._sample = _Sample(share, int(self.analyzer_options.get("seed", 0)) + trainer.global_rank)

    def on_validation_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._sample is not None and self.eval_data is None and dataloader_idx == 0 and self._fitting(trainer):
            self._sample.add(*_pair(batch))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._fitting(trainer):
            return
        if self.eval_data is None and self._sample is not None:
            self._finish_sample(trainer, pl_module)
        if not trainer.is_last_batch:  # a validation inside the epoch: the sample only
            return
        epoch = trainer.current_epoch + 1
        self._end_training_epoch(trainer, epoch)
        if trainer.is_global_zero and self.analyzer is not None:
            loss = trainer.callback_metrics.get("train_loss")
            self._run(trainer, pl_module, epoch, trainer.global_step,
                      train_loss=float(loss) if isinstance(loss, Tensor) and loss.numel() == 1 else None)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._recorder is None or outputs is None:
            return
        index = _index_of(batch)
        logits = outputs.get("logits") if isinstance(outputs, Mapping) else None
        if index is None or logits is None:
            self._no_map(trainer, "the training batches carry no indices: wrap the training dataset in "
                                  "interp.data.WithIndex, so that a batch is (x, y, index)" if index is None else
                                  "training_step returns no logits: return {'loss': loss, 'logits': logits}")
            return
        self._recorder.observe_checked(index, logits, "InterpCallback")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._end_training_epoch(trainer, trainer.current_epoch + 1)  # an epoch without validation

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        try:
            if self.analyzer is not None:
                self.analyzer.close()
            elif trainer.is_global_zero and self.eval_data is None and self._resume is None:
                self.notice("InterpCallback: no validation batches came (no validation dataloader, or none of its "
                            "runs ended): nothing was analysed")
        finally:
            self._end_fit()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Stop the figure drawing and close the run folder (the figures drawn so far stay)."""
        analyzer = self.analyzer
        self._end_fit()
        if analyzer is not None:
            analyzer.run_folder.close(finish=False)

    def _end_fit(self) -> None:
        """Let go of what this fit held; the state (run folder, epochs) stays for :meth:`state_dict`."""
        self.analyzer = None
        self._classifier_recorded = 0  # the last epoch whose classifier went into its training record
        self._resume = None
        self._initial = self._recorder = self._sample = None
        self._unwritten = []
        watching, self._watching, self._health = self._watching, None, None
        if watching is not None:
            watching.__exit__(None, None, None)

    # -- the evaluation sample and the analysis --------------------------------------------------------
    @staticmethod
    def _fitting(trainer: Trainer) -> bool:
        return not trainer.sanity_checking and trainer.state.fn == "fit"

    def _finish_sample(self, trainer: Trainer, pl_module: LightningModule) -> None:
        assert self._sample is not None
        data = self._sample.tensors()
        self._sample = None
        if trainer.world_size > 1:
            data = self._gather(trainer, pl_module, data)
        if data is None:
            raise UserError("InterpCallback: the validation dataloader is empty")
        self.eval_data = data[0][: self.eval_limit], data[1][: self.eval_limit]
        if trainer.is_global_zero:
            self._make_analyzer(trainer, pl_module)
            if self._initial is not None:
                self._run_initial(trainer, pl_module)

    @staticmethod
    def _gather(trainer: Trainer, pl_module: LightningModule, data: tuple[Tensor, Tensor] | None,
                ) -> tuple[Tensor, Tensor] | None:
        """Every process's sample, to all of them (a collective: every process calls it)."""
        if data is None:
            raise UserError("InterpCallback: a process received no validation batch to sample; under a DDP "
                            "strategy every process needs at least one")
        strategy, device = trainer.strategy, pl_module.device
        counts = strategy.all_gather(torch.tensor([len(data[0])], device=device)).view(-1).tolist()
        most = max(counts)
        parts = []
        for t in data:
            padded = torch.cat([t, t.new_zeros((most - len(t), *t.shape[1:]))]).to(device)
            every = strategy.all_gather(padded)
            parts.append(torch.cat([every[r, :c] for r, c in enumerate(counts)]).cpu())
        return parts[0], parts[1]

    def _make_analyzer(self, trainer: Trainer, pl_module: LightningModule) -> None:
        assert self.eval_data is not None
        resume = self._resume is not None and self._folder is not None and self._epoch is not None
        folder = self._folder if resume and self._folder is not None else self.folder
        max_epochs = trainer.max_epochs if (trainer.max_epochs or -1) > 0 else None
        influence = self.stages is None or any(s == "influence" or (isinstance(s, dict) and "influence" in s)
                                               for s in self.stages)  # it reads the training images too
        train = self._train_tensors(trainer) if self._recorder is not None or influence else None
        x_eval, y_eval = (t.to(pl_module.device) for t in self.eval_data)
        self.analyzer = Analyzer(folder, eval_data=(x_eval, y_eval), classes=self.classes, mean=self.mean,
                                 std=self.std, stages=self.stages, epochs=max_epochs, notice=self.notice, train_data=train,
                                 resume=self._epoch if resume else None, tensorboard=False, scalars=self._scalar,
                                 dynamics=self._recorder, health=self._health, **self.analyzer_options)
        self._folder = self.analyzer.folder
        self._write_records()
        if self._map_problem is not None:
            self._quiet_map_stage()

    def _scalar(self, tag: str, value: float, step: int) -> None:
        self._scalars[f"{self.log_prefix}{tag}"] = value

    def _run(self, trainer: Trainer, pl_module: LightningModule, epoch: int, step: int,
             train_loss: float | None = None) -> None:
        assert self.analyzer is not None
        self._scalars = {}
        with torch.inference_mode(False), torch.enable_grad():
            self.analyzer.run(pl_module, epoch=epoch, train_loss=train_loss)
        self._epoch = epoch
        scalars, self._scalars = self._scalars, {}
        if scalars:
            for logger in trainer.loggers:
                logger.log_metrics(scalars, step=step)

    def _run_initial(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Epoch 0: the weights of on_train_start swapped in for the analysis, then back."""
        assert self._initial is not None
        with torch.inference_mode(False), torch.no_grad():
            now = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            pl_module.load_state_dict(self._initial)
        try:
            self._run(trainer, pl_module, 0, self._start_step)
        finally:
            with torch.inference_mode(False), torch.no_grad():
                pl_module.load_state_dict(now)
            self._initial = None

    # -- the dataset map ---------------------------------------------------------------------------------
    def _train_tensors(self, trainer: Trainer) -> tuple[Tensor, Tensor] | None:
        return self.train_data if self.train_data is not None else _dataset_tensors(trainer.train_dataloader)

    def _start_map(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The recorder, on every process, when a stage reads the training dynamics and the training set is known."""
        if not self._map_cells:
            return
        from .analysis.dynamics import Dynamics

        data = self._train_tensors(trainer)
        if data is None:
            self._no_map(trainer, "InterpCallback has no training set for the indices to refer to: pass "
                                  "train_data=(x_train, y_train), or train on a TensorDataset (wrapped in "
                                  "interp.data.WithIndex)")
            return
        _, labels = labelled_pair(data, len(self.classes), "InterpCallback: train_data")
        self._recorder = Dynamics(labels.to(pl_module.device), len(self.classes), cells=self._map_cells,
                                  seed=int(self.analyzer_options.get("seed", 0)))
        self._recorder.start_epoch()
        if self._resume is not None and self._folder is not None and trainer.is_global_zero:
            through = max(e for e in (self._epoch, self._recorded, 0) if e is not None)
            self._recorder.load(self._folder, through)

    def _no_map(self, trainer: Trainer, why: str) -> None:
        """No dataset map in this fit: one notice saying why (in place of the stage's own)."""
        self._recorder = None
        if self.analyzer is not None:
            self.analyzer.dynamics = self.analyzer.analysis.dynamics = None
        if self._map_problem is None and trainer.is_global_zero:
            self._map_problem = why
            self.notice(f"dataset_map: skipped ({why})")
            self._quiet_map_stage()

    def _quiet_map_stage(self) -> None:
        if self.analyzer is not None:
            for stage in self.analyzer.analysis.stages:
                if "dynamics" in stage.needs:
                    stage.skip_noticed = True

    def _end_training_epoch(self, trainer: Trainer, epoch: int) -> None:
        """The epoch's recordings (the dataset map's, the layers' health), each summed over the processes (a
        collective, so every process calls this), kept by rank 0 and written as one record of the epoch when
        there is a run folder."""
        recorded = {part: data for part, data in (("examples", self._end_map_epoch(trainer, epoch)),
                                                  ("health", self._end_health_epoch(trainer, epoch)))
                    if data is not None}
        analyzer = self.analyzer
        if trainer.is_global_zero and trainer.optimizers and analyzer is not None and len(analyzer.data.train_y) \
                and epoch > self._classifier_recorded:  # once an epoch: a second call must not overwrite the record
            self._classifier_recorded = epoch
            from .analysis.influence import classifier_lr, classifier_part  # the classifier, for influence

            with contextlib.suppress(UserError):  # no Linear or 1×1 conv classifier: nothing to keep
                part = classifier_part(trainer.lightning_module, classifier_lr(
                    trainer.lightning_module, trainer.optimizers[0], analyzer.features_layer), analyzer.features_layer)
                if part is not None:
                    recorded["classifier"] = part
        if recorded and trainer.is_global_zero:
            from .analysis import training

            self._unwritten.append((training.record_name(epoch), training.encode(epoch, recorded)))
            self._write_records()

    def _end_map_epoch(self, trainer: Trainer, epoch: int) -> dict[str, Any] | None:
        """The dataset map's part of the epoch's record (None: nothing recorded, or not rank 0)."""
        recorder = self._recorder
        if recorder is None or (self._recorded is not None and self._recorded >= epoch):
            return None
        if recorder.handed == 0 and trainer.world_size == 1:
            return None
        recorder.check_repeats(epoch, "InterpCallback")
        total = (lambda t: trainer.strategy.reduce(t, reduce_op="sum")) if trainer.world_size > 1 else None
        numbers = recorder.end_epoch(epoch, total, keep=trainer.is_global_zero)
        recorder.start_epoch()
        self._recorded = epoch
        return recorder.record_data(numbers) if trainer.is_global_zero else None

    # -- the layers' health --------------------------------------------------------------------------------
    def _start_health(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """The Health recorder watching the module and its (first) optimiser, on every process, when a stage
        reads it."""
        if self._health_options is None or not trainer.optimizers:
            return
        from .analysis.health import Health

        self._health = Health(every=self._health_options.every, bins=self._health_options.bins)
        self._health.start_epoch()
        if self._resume is not None and self._folder is not None and trainer.is_global_zero:
            through = max(e for e in (self._epoch, self._health_recorded, 0) if e is not None)
            self._health.load(self._folder, through)
        self._watching = self._health.watch(pl_module, trainer.optimizers[0])
        self._watching.__enter__()

    def _end_health_epoch(self, trainer: Trainer, epoch: int) -> dict[str, Any] | None:
        """As :meth:`_end_map_epoch`, for the layers' health."""
        health = self._health
        if health is None or (self._health_recorded is not None and self._health_recorded >= epoch):
            return None
        if health.step == 0 and trainer.world_size == 1:
            return None
        total = (lambda t: trainer.strategy.reduce(t, reduce_op="sum")) if trainer.world_size > 1 else None
        numbers = health.end_epoch(epoch, total, keep=trainer.is_global_zero)
        health.start_epoch()
        self._health_recorded = epoch
        return numbers.record_data() if trainer.is_global_zero and numbers is not None else None

    def _write_records(self) -> None:
        """The recorded epochs (dataset map, health) into the run folder, once there is one."""
        if self.analyzer is None:
            return
        for name, content in self._unwritten:
            self.analyzer.run_folder.sink.file(name, content)
        self._unwritten = []
