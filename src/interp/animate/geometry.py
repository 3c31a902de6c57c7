"""The hidden-space geometry of ``interp animate``: a grid of the input square, that grid carried through
a network, the decision line of a 2 → 1 output layer, and the layer-width label of an architecture."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..models import MLP

__all__ = ["GRID_EXTENT", "GRID_SPACING", "decision_line", "grid_lines", "shape_label", "warp_grid"]

GRID_EXTENT = 1.0  # the warped grid covers the input square [−1, 1]² …
GRID_SPACING = 0.1  # … with lines 0.1 apart (21 horizontal and 21 vertical lines)
GRID_SAMPLES = 201  # points along each grid line


def shape_label(input_size: int, hidden: list[int], outputs: int = 1) -> str:
    """The layer widths joined by dashes, input to output: ``2-3-2-1`` for hidden ``[3, 2]`` on rings."""
    return "-".join(str(width) for width in (input_size, *hidden, outputs))


def grid_lines(extent: float = GRID_EXTENT, spacing: float = GRID_SPACING, samples: int = GRID_SAMPLES) -> Tensor:
    """A regular grid of the square [−extent, extent]² as densely sampled lines.

    Returns (2·n, samples, 2) float32 with n = 2·extent/spacing + 1 lines per direction: first the
    horizontal lines (constant x₂, bottom to top), then the vertical ones (constant x₁, left to right).
    """
    count = round(2 * extent / spacing) + 1
    levels = torch.linspace(-extent, extent, count)
    along = torch.linspace(-extent, extent, samples)
    horizontal = torch.stack([along.expand(count, samples), levels[:, None].expand(count, samples)], dim=2)
    vertical = torch.stack([levels[:, None].expand(count, samples), along.expand(count, samples)], dim=2)
    return torch.cat([horizontal, vertical])


@torch.no_grad()
def warp_grid(model: MLP, lines: Tensor) -> Tensor:
    """``lines`` (…, 2) in the input plane carried through the hidden layers of ``model``: (…, last width)."""
    flat = lines.reshape(-1, lines.shape[-1])
    return model.features(flat).reshape(*lines.shape[:-1], -1)


@torch.no_grad()
def decision_line(head: nn.Linear, xlim: tuple[float, float], ylim: tuple[float, float]) -> np.ndarray | None:
    """The two ends of the line a·h₁ + b·h₂ + c = 0 (sigmoid output 0.5) of a 2 → 1 output layer.

    ``a``, ``b`` are the layer's weights and ``c`` its bias. The line is parametrised along the axis it
    is closer to parallel with, so a vertical line (b ≈ 0) is exact too: h₂ runs over ``ylim`` when
    |a| > |b|, else h₁ runs over ``xlim``; the ends may lie outside the view (axes clip them). Returns
    a (2, 2) array of (h₁, h₂) rows, or None when both weights are 0 (no line).
    """
    if head.in_features != 2 or head.out_features != 1:
        raise ValueError(f"decision_line needs a 2 → 1 layer, got {head.in_features} → {head.out_features}")
    a, b = (float(w) for w in head.weight[0].double())
    c = float(head.bias[0]) if head.bias is not None else 0.0
    if a == 0.0 and b == 0.0:
        return None
    if abs(b) >= abs(a):
        h1 = np.array(xlim, dtype=np.float64)
        return np.stack([h1, -(a * h1 + c) / b], axis=1)
    h2 = np.array(ylim, dtype=np.float64)
    return np.stack([-(b * h2 + c) / a, h2], axis=1)
