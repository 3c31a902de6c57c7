"""Your own dataset: ``data.dataset: "package.module:factory"``.

The factory is called with the keywords its signature accepts among ``root`` and ``seed``, plus every
key of ``data.args``. It returns ``(train, eval, classes)`` or a dict with those keys (and optionally
``mean`` and ``std``), where ``train`` and ``eval`` are each

- a pair of tensors ``(images, labels)``: images (N, C, H, W) as uint8 pixels or floats in [0, 1], or
- a ``torch.utils.data.Dataset`` of ``(image, label)`` items, images as PIL images, uint8 tensors or
  float tensors in [0, 1] (C, H, W).

Images are kept as uint8 tensors in memory like every other dataset; without ``mean``/``std`` they are
computed from the training images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..config import DataConfig
from ..errors import UserError
from .tensors import Data

__all__ = ["load_custom"]


def _as_uint8(images: Tensor, where: str) -> Tensor:
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise UserError(f"{where}: images must be uint8 pixels or floats in [0, 1], got {images.dtype}")
    if images.numel() and (float(images.min()) < 0 or float(images.max()) > 1):
        raise UserError(f"{where}: float images must lie in [0, 1] (found {float(images.min()):.3g}…"
                        f"{float(images.max()):.3g}); pass pixels, not normalized values")
    return images.mul(255).round().to(torch.uint8)


def _item_image(image: Any) -> Tensor:
    if isinstance(image, Tensor):
        return image
    if hasattr(image, "convert"):  # a PIL image
        array = np.asarray(image.convert("L" if image.mode in ("1", "L", "LA", "I", "F") else "RGB"))
        array = array[:, :, None] if array.ndim == 2 else array
        return torch.from_numpy(array.copy()).permute(2, 0, 1)
    return torch.as_tensor(np.asarray(image))


def _split(value: Any, where: str) -> tuple[Tensor, Tensor]:
    if isinstance(value, tuple | list) and len(value) == 2 and all(isinstance(v, Tensor) for v in value):
        images, labels = value
    elif isinstance(value, torch.utils.data.Dataset):
        try:
            items = [value[i] for i in range(len(value))]  # type: ignore[arg-type]
        except TypeError:
            raise UserError(f"{where}: the Dataset needs __len__ and __getitem__") from None
        if not items:
            raise UserError(f"{where}: the Dataset is empty")
        images = torch.stack([_item_image(image) for image, _ in items])
        labels = torch.tensor([int(label) for _, label in items])
    else:
        raise UserError(f"{where}: expected (images, labels) tensors or a torch Dataset, got {type(value).__name__}")
    if images.dim() != 4 or len(images) != len(labels):
        raise UserError(f"{where}: expected images (N, C, H, W) and N labels, got {tuple(images.shape)} and "
                        f"{tuple(labels.shape)}")
    return _as_uint8(images, where).contiguous(), labels.long()


def load_custom(cfg: DataConfig, seed: int) -> Data:
    from ..imports import call, import_path

    where = "data.dataset"
    result = call(cfg.dataset, where, import_path(cfg.dataset, where), {"root": cfg.root, "seed": seed}, cfg.args)
    if isinstance(result, dict):
        parts = {k: result.get(k) for k in ("train", "eval", "classes", "mean", "std")}
    elif isinstance(result, tuple | list) and len(result) == 3:
        parts = dict(zip(("train", "eval", "classes"), result, strict=True)) | {"mean": None, "std": None}
    else:
        raise UserError(f"data.dataset {cfg.dataset!r}: the factory must return (train, eval, classes) or a dict "
                        f"with those keys, got {type(result).__name__}")
    train_x, train_y = _split(parts["train"], f"data.dataset {cfg.dataset!r} train")
    eval_x, eval_y = _split(parts["eval"], f"data.dataset {cfg.dataset!r} eval")
    classes = [str(c) for c in parts["classes"] or []]
    top = int(max(train_y.max(), eval_y.max()))
    if not classes or top >= len(classes) or int(min(train_y.min(), eval_y.min())) < 0:
        raise UserError(f"data.dataset {cfg.dataset!r}: labels run to {top} but there are {len(classes)} class names")
    if train_x.shape[1:] != eval_x.shape[1:]:
        raise UserError(f"data.dataset {cfg.dataset!r}: train images {tuple(train_x.shape[1:])} and eval images "
                        f"{tuple(eval_x.shape[1:])} differ in shape")
    mean, std = parts["mean"], parts["std"]
    if mean is None or std is None:
        pixels = train_x.float().div(255)
        mean, std = pixels.mean(dim=(0, 2, 3)).tolist(), pixels.std(dim=(0, 2, 3)).clamp(min=1e-6).tolist()
    return Data(name=cfg.dataset, task="classification", train_x=train_x, train_y=train_y, eval_x=eval_x,
                eval_y=eval_y, classes=classes, mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))
