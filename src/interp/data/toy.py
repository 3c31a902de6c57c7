"""The two toy problems: concentric rings (classification) and a quartic polynomial (regression)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["RING_RADII", "as_data", "polynomial", "polynomial_target", "rings"]

RING_RADII = (0.5, 1.0)  # label 0: inner ring, label 1: outer ring
RING_CLASSES = ["inner (r=0.5)", "outer (r=1)"]


def rings(points: int = 20_000, noise: float = 0.005, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Two concentric noisy circles: ``points`` per ring, evenly spaced in angle, Gaussian noise ``noise``.

    Returns ``x`` (2·points, 2) float32 and ``y`` (2·points,) int64 with 0 = radius 0.5, 1 = radius 1.0.
    """
    generator = torch.Generator().manual_seed(seed)
    angle = torch.linspace(0.0, 2.0 * math.pi, points, dtype=torch.float64)
    xs, ys = [], []
    for label, radius in enumerate(RING_RADII):
        circle = radius * torch.stack([torch.sin(angle), torch.cos(angle)], dim=1)
        xs.append(circle + noise * torch.randn(points, 2, generator=generator, dtype=torch.float64))
        ys.append(torch.full((points,), label, dtype=torch.long))
    return torch.cat(xs).float(), torch.cat(ys)


def polynomial_target(x: Tensor) -> Tensor:
    """y = x⁴ − 3x² + x + 1."""
    return x**4 - 3 * x**2 + x + 1


def polynomial(points: int = 4_000, test_points: int = 400, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Training x uniform in [−2, 2] and ``test_points`` evenly spaced test x, each shaped (N, 1)."""
    generator = torch.Generator().manual_seed(seed)
    train_x = (4 * torch.rand(points, 1, generator=generator, dtype=torch.float64) - 2).float()
    test_x = torch.linspace(-2.0, 2.0, test_points).unsqueeze(1)
    return train_x, polynomial_target(train_x), test_x, polynomial_target(test_x)


def as_data(name: str, *, points: int | None, noise: float, seed: int):  # type: ignore[no-untyped-def]
    """The toy problem ``name`` as an :class:`interp.data.Data` (evaluation = a fresh draw / the test grid)."""
    from .tensors import Data

    if name == "rings":
        n = points or 20_000
        train_x, train_y = rings(n, noise, seed)
        eval_x, eval_y = rings(max(n // 5, 1), noise, seed + 1)
        return Data("rings", "classification", train_x, train_y, eval_x, eval_y, list(RING_CLASSES))
    if name == "polynomial":
        train_x, train_y, test_x, test_y = polynomial(points or 4_000, seed=seed)
        return Data("polynomial", "regression", train_x, train_y, test_x, test_y, [])
    raise ValueError(f"unknown toy dataset {name!r}")
