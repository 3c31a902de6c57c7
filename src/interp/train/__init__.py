"""Training: a short loop that emits events to callbacks (:mod:`.loop`), the callbacks that log,
analyze and checkpoint (:mod:`.callbacks`), and :func:`fit`, which builds a run from a config (:mod:`.fit`)."""

from __future__ import annotations

from .callbacks import AnalysisCallback, CheckpointCallback, RunLogger
from .fit import TrainResult, fit, load_model, make_optimizer, resolve_device
from .loop import Callback, Reporter, SilentReporter, Trainer, train_epoch

__all__ = [
    "AnalysisCallback",
    "Callback",
    "CheckpointCallback",
    "Reporter",
    "RunLogger",
    "SilentReporter",
    "TrainResult",
    "Trainer",
    "fit",
    "load_model",
    "make_optimizer",
    "resolve_device",
    "train_epoch",
]
