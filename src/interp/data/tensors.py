"""A dataset as in-memory tensors, per-batch normalization, and the fixed probe batch.

Images are decoded once into uint8 tensors (N, C, H, W) and kept in memory (on the GPU when training
there). Batches are cut with ``randperm`` and normalized on the device, so the training loop does no
per-item Python or PIL work.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor

__all__ = ["Data", "Probe", "select_probe"]


@dataclass
class Data:
    """A dataset held as tensors: uint8 images (N, C, H, W), or float features (N, D) for toy data."""

    name: str
    task: Literal["classification", "regression"]
    train_x: Tensor
    train_y: Tensor
    eval_x: Tensor
    eval_y: Tensor
    classes: list[str]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    # True when the images are already normalized floats (the Python API's eval_data), not uint8 pixels.
    normalized: bool = False
    # (N_eval, H, W) bool: where the answer lies in each evaluation image, when the task knows it (patches).
    eval_masks: Tensor | None = field(default=None, repr=False)
    _affine: tuple[Tensor, Tensor] | None = field(default=None, repr=False)

    @property
    def is_image(self) -> bool:
        return self.eval_x.dim() == 4

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.eval_x.shape[1:])

    @property
    def num_outputs(self) -> int:
        return len(self.classes) if self.task == "classification" else int(self.train_y.shape[1])

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def to(self, device: torch.device | str) -> Data:
        """The same data on ``device`` (images stay uint8 until a batch is normalized)."""
        device = torch.device(device)
        moved = [t.to(device) for t in (self.train_x, self.train_y, self.eval_x, self.eval_y)]
        masks = None if self.eval_masks is None else self.eval_masks.to(device)
        return replace(self, train_x=moved[0], train_y=moved[1], eval_x=moved[2], eval_y=moved[3], eval_masks=masks,
                       _affine=None)

    def normalize(self, x: Tensor) -> Tensor:
        """uint8 pixels (B, C, H, W) → float ``(x / 255 - mean) / std``; toy features pass as float."""
        if not self.is_image or self.normalized:
            return x.float()
        scale, shift = self._scale_shift(x.device)
        return x.float().mul_(scale).add_(shift)

    def denormalize(self, x: Tensor) -> Tensor:
        """Normalized images → pixel values in [0, 1] (for drawing)."""
        if not self.is_image:
            return x
        if not self.mean:  # normalization unknown: each image scaled to its own range, for display only
            low = x.flatten(1).amin(dim=1).view(-1, 1, 1, 1)
            high = x.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
            return ((x - low) / (high - low).clamp(min=1e-12)).clamp(0.0, 1.0)
        scale, shift = self._scale_shift(x.device)
        return ((x - shift) / scale / 255.0).clamp(0.0, 1.0)

    def black(self, like: Tensor) -> Tensor:
        """An all-black image (pixel value 0) in normalized space, shaped like ``like`` (an all-zero input
        when the normalization is unknown)."""
        if not self.mean:
            return torch.zeros_like(like)
        _, shift = self._scale_shift(like.device)
        return shift.expand_as(like).clone()

    def _scale_shift(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if self._affine is None or self._affine[0].device != device:
            std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
            mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
            self._affine = (1.0 / (255.0 * std), -mean / std)
        return self._affine

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Normalized evaluation batches, in order."""
        for start in range(0, len(self.eval_x), batch_size):
            yield self.normalize(self.eval_x[start:start + batch_size]), self.eval_y[start:start + batch_size]


@dataclass
class Probe:
    """The fixed probe batch: the same evaluation images every epoch, a few per class."""

    indices: Tensor  # (B,) positions in the evaluation set
    x: Tensor  # (B, C, H, W) normalized
    y: Tensor  # (B,)
    pixels: Tensor  # (B, C, H, W) in [0, 1], for drawing


def select_probe(data: Data, per_class: int, seed: int) -> Probe:
    """Pick ``per_class`` evaluation items of each class with ``seed``; class order, then draw order."""
    generator = torch.Generator().manual_seed(seed)
    labels = data.eval_y.cpu()
    if data.task == "classification":
        order = torch.randperm(len(labels), generator=generator)
        chosen = [order[labels[order] == c][:per_class] for c in range(len(data.classes))]
        indices = torch.cat(chosen)
    else:
        indices = torch.randperm(len(labels), generator=generator)[: per_class * 10]
    indices = indices.to(data.device)
    x = data.normalize(data.eval_x[indices])
    return Probe(indices=indices, x=x, y=data.eval_y[indices], pixels=data.denormalize(x))
