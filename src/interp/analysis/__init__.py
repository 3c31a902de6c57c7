"""Analysis as a library: the per-epoch :class:`Evaluation`, the :class:`Sink` stages write through, the
stage runner, and :class:`Analyzer` for a training loop of your own."""

from __future__ import annotations

from typing import Any

__all__ = ["Analysis", "Analyzer", "Evaluation", "NullSink", "RunSink", "Sink", "StageContext", "evaluate",
           "run_stages"]

_LAZY = {
    "Analysis": "api", "Analyzer": "api",
    "Evaluation": "evaluation", "evaluate": "evaluation",
    "NullSink": "sink", "RunSink": "sink", "Sink": "sink",
    "StageContext": "runner", "run_stages": "runner",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'interp.analysis' has no attribute {name!r}")
