"""Datasets by name → in-memory tensors, per-batch normalisation, and the fixed probe batch.

Images are decoded once into uint8 tensors (N, C, H, W) and kept in memory (on the GPU when training
there). Batches are cut with ``randperm`` and normalised on the device, so the training loop does no
per-item Python or PIL work.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import Literal

import torch
from torch import Tensor

from .config import DataConfig
from .errors import UserError
from .sources import CIFAR10_FILES, MNIST_FILES, folder_of, missing_message

__all__ = ["Data", "Probe", "load_data", "select_probe", "MNIST_FILES", "CIFAR10_FILES"]


_MNIST_STATS = ((0.1307,), (0.3081,))
_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


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
    _affine: tuple[Tensor, Tensor] | None = field(default=None, repr=False)

    @property
    def is_image(self) -> bool:
        return self.train_x.dim() == 4

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def num_outputs(self) -> int:
        return len(self.classes) if self.task == "classification" else int(self.train_y.shape[1])

    @property
    def device(self) -> torch.device:
        return self.train_x.device

    def to(self, device: torch.device | str) -> Data:
        """The same data on ``device`` (images stay uint8 until a batch is normalised)."""
        device = torch.device(device)
        moved = [t.to(device) for t in (self.train_x, self.train_y, self.eval_x, self.eval_y)]
        return replace(self, train_x=moved[0], train_y=moved[1], eval_x=moved[2], eval_y=moved[3], _affine=None)

    def normalise(self, x: Tensor) -> Tensor:
        """uint8 pixels (B, C, H, W) → float ``(x / 255 - mean) / std``; toy features pass as float."""
        if not self.is_image:
            return x.float()
        scale, shift = self._scale_shift(x.device)
        return x.float().mul_(scale).add_(shift)

    def denormalise(self, x: Tensor) -> Tensor:
        """Normalised images → pixel values in [0, 1] (for drawing)."""
        if not self.is_image:
            return x
        scale, shift = self._scale_shift(x.device)
        return ((x - shift) / scale / 255.0).clamp(0.0, 1.0)

    def black(self, like: Tensor) -> Tensor:
        """An all-black image (pixel value 0) in normalised space, shaped like ``like``."""
        _, shift = self._scale_shift(like.device)
        return shift.expand_as(like).clone()

    def _scale_shift(self, device: torch.device) -> tuple[Tensor, Tensor]:
        if self._affine is None or self._affine[0].device != device:
            std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
            mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
            self._affine = (1.0 / (255.0 * std), -mean / std)
        return self._affine

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Normalised evaluation batches, in order."""
        for start in range(0, len(self.eval_x), batch_size):
            yield self.normalise(self.eval_x[start:start + batch_size]), self.eval_y[start:start + batch_size]


@dataclass
class Probe:
    """The fixed probe batch: the same evaluation images every epoch, a few per class."""

    indices: Tensor  # (B,) positions in the evaluation set
    x: Tensor  # (B, C, H, W) normalised
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
    x = data.normalise(data.eval_x[indices])
    return Probe(indices=indices, x=x, y=data.eval_y[indices], pixels=data.denormalise(x))


def load_data(cfg: DataConfig, seed: int = 0) -> Data:
    """Load the dataset ``cfg.dataset`` into memory (on the CPU; call ``.to(device)`` after)."""
    if cfg.dataset == "mnist-sample":
        data = _mnist_sample()
    elif cfg.dataset == "mnist":
        data = _mnist(cfg)
    elif cfg.dataset == "cifar10":
        data = _cifar10(cfg)
    else:
        from .animate import toy

        data = toy.as_data(cfg.dataset, points=cfg.points, noise=cfg.noise, seed=seed)
    if cfg.train_limit is not None:
        data = replace(data, train_x=data.train_x[: cfg.train_limit], train_y=data.train_y[: cfg.train_limit])
    return data


def _read_idx_gz(raw: bytes) -> Tensor:
    """Parse a gzip-compressed IDX file of unsigned bytes (the MNIST format)."""
    payload = gzip.decompress(raw)
    zero, dtype, ndim = struct.unpack(">HBB", payload[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError("not an IDX file of unsigned bytes")
    dims = struct.unpack(f">{ndim}I", payload[4:4 + 4 * ndim])
    return torch.frombuffer(bytearray(payload), dtype=torch.uint8, offset=4 + 4 * ndim).view(*dims)


def _mnist_sample() -> Data:
    folder = resources.files("interp") / "mnist_sample"
    parts = [_read_idx_gz((folder / f"{name}.gz").read_bytes()) for name in MNIST_FILES]
    return _mnist_data("mnist-sample", *parts)


def _mnist_data(name: str, train_x: Tensor, train_y: Tensor, eval_x: Tensor, eval_y: Tensor) -> Data:
    return Data(
        name=name,
        task="classification",
        train_x=train_x.unsqueeze(1).contiguous(),  # (N, 1, 28, 28)
        train_y=train_y.long(),
        eval_x=eval_x.unsqueeze(1).contiguous(),
        eval_y=eval_y.long(),
        classes=[str(d) for d in range(10)],
        mean=_MNIST_STATS[0],
        std=_MNIST_STATS[1],
    )


def _mnist(cfg: DataConfig) -> Data:
    from torchvision.datasets import MNIST

    splits = [_torchvision(MNIST, cfg, train) for train in (True, False)]
    return _mnist_data("mnist", splits[0].data, splits[0].targets, splits[1].data, splits[1].targets)


def _cifar10(cfg: DataConfig) -> Data:
    from torchvision.datasets import CIFAR10

    class _CIFAR10(CIFAR10):
        # Check that the batches exist, not their MD5 sums: files re-pickled in the same format load
        # too, and no 170 MB hashing on every start. The downloaded archive is still checked.
        train_list = [[name, None] for name, _ in CIFAR10.train_list]
        test_list = [[name, None] for name, _ in CIFAR10.test_list]
        meta = {**CIFAR10.meta, "md5": None}

    splits = [_torchvision(_CIFAR10, cfg, train) for train in (True, False)]

    def images(split: CIFAR10) -> Tensor:
        return torch.from_numpy(split.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) → (N, 3, 32, 32)

    return Data(
        name="cifar10",
        task="classification",
        train_x=images(splits[0]),
        train_y=torch.tensor(splits[0].targets, dtype=torch.long),
        eval_x=images(splits[1]),
        eval_y=torch.tensor(splits[1].targets, dtype=torch.long),
        classes=list(splits[0].classes),
        mean=_CIFAR10_STATS[0],
        std=_CIFAR10_STATS[1],
    )


def _torchvision(cls, cfg: DataConfig, train: bool):  # type: ignore[no-untyped-def]
    """Build a torchvision dataset; turn 'not found' and failed downloads into one clear UserError."""
    folder = folder_of(cfg)
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            return cls(root=cfg.root, train=train, download=cfg.download)
    except Exception as exc:  # torchvision raises RuntimeError, URLError, OSError, tarfile errors …
        for path in missing:  # leave no empty folders behind
            with contextlib.suppress(OSError):
                path.rmdir()
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:160]
        raise UserError(missing_message(cfg, reason if cfg.download else None)) from None
