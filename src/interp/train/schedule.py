"""The learning rate at each optimiser step: constant, or a linear warm-up followed by a cosine decay.

The rate is a function of the step's index alone (no scheduler state), so a resumed run — whose step
index follows from the epoch it resumes after — sets exactly the rates the uninterrupted run set."""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["lr_schedule"]


def lr_schedule(kind: str, base_lr: float, total_steps: int, warmup_steps: int = 0) -> Callable[[int], float]:
    """``rate(step)`` for steps ``0 … total_steps - 1``: ``constant`` is ``base_lr`` throughout; ``cosine``
    rises linearly to ``base_lr`` over ``warmup_steps`` (from ``base_lr / warmup_steps``), then follows
    half a cosine down to zero at ``total_steps``."""
    if kind == "constant":
        return lambda step: base_lr
    if kind != "cosine":
        raise ValueError(f"unknown schedule {kind!r}")
    warmup = max(0, min(warmup_steps, total_steps - 1))

    def rate(step: int) -> float:
        if step < warmup:
            return base_lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return base_lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return rate
