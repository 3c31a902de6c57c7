"""A task whose answer is known: ``data.dataset: patches``.

Each image is 1×28×28 of faint uniform noise (pixel values 0 … 0.1) with one bright 5×5 patch
(0.7 … 1.0). The patch's position alone decides the class: nine positions on a 3×3 grid, one per class.
Nothing else in the image carries information, so a map that explains a prediction should put its
weight on the patch; the evaluation images come with the patch's mask (``Data.eval_masks``) and the
``trust`` stage reports the fraction of each method's attribution mass that lands inside it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .tensors import Data

__all__ = ["CLASSES", "PATCH", "patches", "as_data"]

SIZE = 28
PATCH = 5  # side of the patch, pixels
NOISE = 0.1  # background: uniform noise in [0, NOISE]
CLASSES = ["top-left", "top", "top-right", "left", "centre", "right", "bottom-left", "bottom", "bottom-right"]
_STARTS = [(2 + 9 * row, 2 + 9 * col) for row in range(3) for col in range(3)]  # the patch's top-left corner
TRAIN, EVAL = 6_000, 1_000


def patches(count: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """``count`` images: uint8 (N, 1, 28, 28), labels (N,) and the patch masks (N, 28, 28) bool."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(CLASSES), (count,), generator=generator)
    pixels = torch.rand(count, 1, SIZE, SIZE, generator=generator) * NOISE
    top = torch.tensor(_STARTS)[labels]  # (N, 2)
    line = torch.arange(SIZE)
    rows = (line >= top[:, :1]) & (line < top[:, :1] + PATCH)  # (N, 28)
    cols = (line >= top[:, 1:]) & (line < top[:, 1:] + PATCH)
    masks = rows[:, :, None] & cols[:, None, :]  # (N, 28, 28)
    level = 0.7 + 0.3 * torch.rand(count, generator=generator)
    pixels = torch.where(masks[:, None], level.view(-1, 1, 1, 1), pixels)
    return pixels.mul(255).round().to(torch.uint8), labels, masks


def as_data(seed: int = 0) -> Data:
    """6,000 training and 1,000 evaluation images (drawn with ``seed`` and ``seed + 1``), with the
    evaluation images' patch masks."""
    train_x, train_y, _ = patches(TRAIN, seed)
    eval_x, eval_y, masks = patches(EVAL, seed + 1)
    values = train_x.float().div(255)
    return Data("patches", "classification", train_x, train_y, eval_x, eval_y, list(CLASSES),
                mean=(float(values.mean()),), std=(float(values.std()),), eval_masks=masks)
