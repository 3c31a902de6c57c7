"""The callbacks ``interp train`` runs: the analysis stages, the metrics log, and checkpoints."""

from __future__ import annotations

from typing import Any

import torch

from ..analysis.api import Analysis
from ..analysis.evaluation import Evaluation
from ..checkpoint import save_checkpoint
from ..run import Run
from .loop import Callback, Trainer

__all__ = ["AnalysisCallback", "CheckpointCallback", "TrainingRecords", "RunLogger"]


class AnalysisCallback(Callback):
    """Runs the stages at epoch 0, every ``every`` epochs and at the last epoch, adding their numbers
    to the epoch's row; forwards optimiser steps and the end of training to the stages that want them."""

    def __init__(self, analysis: Analysis, every: int = 1):
        self.analysis = analysis
        self.every = every
        self._step_stages = analysis.step_stages()

    def due(self, trainer: Trainer, epoch: int) -> bool:
        return epoch == 0 or epoch % self.every == 0 or epoch == trainer.epochs

    def wants_features(self, trainer: Trainer, epoch: int) -> bool:
        return self.analysis.wants_features and self.due(trainer, epoch)

    def on_step(self, trainer: Trainer) -> None:
        for stage in self._step_stages:
            stage.on_step(trainer.model, trainer.global_step, trainer.epoch)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any], evaluation: Evaluation) -> None:
        if self.due(trainer, row["epoch"]):
            row.update(self.analysis.run(evaluation, f"epoch_{row['epoch']:03d}").numbers)

    def on_end(self, trainer: Trainer) -> None:
        self.analysis.end(trainer.model)


class TrainingRecords(Callback):
    """Every training epoch's recordings — the per-example numbers, the layers' health, the classifier's
    weights and learning rate — as one record, ``training/epoch_NNN.npz``, written atomically before the stages
    read them (and, with ``snapshots``, the whole model's weights); a resumed run first takes back the epochs
    it had recorded."""

    def __init__(self, run: Run, snapshots: bool = False):
        self.run = run
        self.snapshots = snapshots  # also the whole model after every epoch: checkpoints/epoch_NNN.pt
        self._no_classifier = False

    def on_start(self, trainer: Trainer) -> None:
        for recorder in (trainer.dynamics, trainer.health):
            if recorder is not None and trainer.epoch > 0:
                recorder.load(self.run.path, trainer.epoch)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any], evaluation: Evaluation) -> None:
        from ..analysis import training

        epoch, recorded = row["epoch"], {}
        dynamics, health = trainer.dynamics, trainer.health
        if dynamics is not None and dynamics.history.epochs and dynamics.history.epochs[-1].epoch == epoch:
            recorded["examples"] = dynamics.record_data(dynamics.history.epochs[-1])
        if health is not None and health.history and health.history[-1].epoch == epoch:
            recorded["health"] = health.history[-1].record_data()
        if epoch > 0 and trainer.data.task == "classification":  # what influence needs of the epoch
            classifier = self._classifier(trainer)
            if classifier is not None:
                recorded["classifier"] = classifier
        if recorded:
            self.run.sink.file(training.record_name(epoch), training.encode(epoch, recorded))
        if self.snapshots and epoch > 0:
            from ..analysis.influence import snapshot_path

            save_checkpoint({"format": 1, "epoch": epoch, "model": trainer.model.state_dict()},
                            snapshot_path(self.run.path, epoch))

    def _classifier(self, trainer: Trainer) -> dict[str, Any] | None:
        """The classifier's weights after the epoch and the epoch's mean learning rate (None: no classifier
        to take, or one over the budget — said once)."""
        from ..analysis.influence import MAX_CLASSIFIER, classifier_part
        from ..errors import UserError

        if self._no_classifier:
            return None
        if trainer.lr_at is not None:
            first = (trainer.epoch - 1) * trainer.steps_per_epoch
            lr = sum(trainer.lr_at(first + i) for i in range(trainer.steps_per_epoch)) / trainer.steps_per_epoch
        else:
            lr = trainer.optimizer.param_groups[0]["lr"]
        try:
            part = classifier_part(trainer.model, lr, trainer.features_layer)
        except UserError:
            part = None
        if part is None:
            self._no_classifier = True
            trainer.reporter.notice(f"influence: the classifier's weights are not kept (no Linear or 1×1 conv "
                                    f"classifier, or over {MAX_CLASSIFIER:,} values)")
        return part


class RunLogger(Callback):
    """Losses, accuracies and the learning rate to TensorBoard; the row to metrics.jsonl; the epoch line."""

    def __init__(self, run: Run):
        self.run = run

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any], evaluation: Evaluation) -> None:
        sink, epoch = self.run.sink, row["epoch"]
        for tag, key in (("loss/train", "train_loss"), ("loss/eval", "eval_loss"),
                         ("accuracy/train", "train_accuracy"), ("accuracy/eval", "eval_accuracy")):
            if row[key] is not None:
                sink.scalar(tag, row[key], epoch)
        if epoch > 0:
            sink.scalar("lr", trainer.optimizer.param_groups[0]["lr"], epoch)
        self.run.append_metrics(row)
        trainer.reporter.epoch(row, trainer.epochs)


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "shuffle": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def is_better(row: dict[str, Any], best: dict[str, Any] | None) -> bool:
    if best is None:
        return True
    if row["eval_accuracy"] is not None:
        return bool((row["eval_accuracy"], -row["eval_loss"]) > (best["eval_accuracy"], -best["eval_loss"]))
    return bool(row["eval_loss"] < best["eval_loss"])


class CheckpointCallback(Callback):
    """last.pt after every epoch and best.pt when the evaluation improved (atomic writes); the state
    holds the model, the optimiser, the epoch, the RNG states and the config."""

    def __init__(self, run: Run, config: dict[str, Any], best: dict[str, Any] | None = None):
        self.run = run
        self.config = config
        self.best = best

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any], evaluation: Evaluation) -> None:
        epoch = row["epoch"]
        summary = {"epoch": epoch, "eval_loss": row["eval_loss"], "eval_accuracy": row["eval_accuracy"]}
        improved = is_better(summary, self.best)
        self.best = summary if improved else self.best
        state = {
            "format": 1,
            "epoch": epoch,
            "model": trainer.model.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "rng": _rng_state(trainer.generator),  # the stages run under fork_rng, so this is training's own
            "config": self.config,
            "metrics": summary,
            "best": self.best,
        }
        scaler = getattr(trainer.speed, "scaler", None)
        if scaler is not None:  # fp16: the loss scale goes on where it was
            state["scaler"] = scaler.state_dict()
        # best.pt first: a crash between the two writes never leaves last.pt naming a best epoch that
        # best.pt does not hold (and a resume repeats the epoch and writes both again)
        if improved:
            save_checkpoint(state, self.run.checkpoints / "best.pt")
        save_checkpoint(state, self.run.checkpoints / "last.pt")
