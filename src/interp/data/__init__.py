"""Data: datasets as in-memory uint8 tensors, the fixed probe batch, and the files they come from.

``interp.data.sources`` (where files live, the offline check) and ``interp.data.safe_pickle`` import no
torch; the rest is imported on first use, so ``import interp.data.sources`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CIFAR10_FILES", "MNIST_FILES", "Data", "Probe", "check_sources", "flip_labels", "load_data",
           "select_probe", "WithIndex"]

_LAZY = {
    "Data": "tensors", "Probe": "tensors", "select_probe": "tensors",
    "load_data": "files", "flip_labels": "files", "WithIndex": "indexed",
    "CIFAR10_FILES": "sources", "MNIST_FILES": "sources", "check_sources": "sources",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'interp.data' has no attribute {name!r}")
