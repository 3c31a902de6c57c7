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
from pathlib import Path
from typing import Any, Literal

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
    from torchvision.datasets.mnist import read_image_file, read_label_file

    folder = folder_of(cfg)
    if not all((folder / name).is_file() for name in MNIST_FILES):
        _torchvision(MNIST, cfg, True)  # downloads (and unpacks) the raw files, or says why not
    parts = []
    for name, reader in zip(MNIST_FILES, (read_image_file, read_label_file) * 2, strict=True):
        path = folder / name
        if not path.is_file():
            raise UserError(missing_message(cfg))
        # IDX files are parsed as numbers; torchvision's processed/*.pt caches are never read.
        try:
            parts.append(reader(str(path)))
        except Exception as exc:  # torchvision asserts on a bad magic number or shape
            raise UserError(f"{path}: not an MNIST IDX file ({_reason(exc)})") from None
    (train_x, train_y, eval_x, eval_y) = parts
    for images, labels, split in ((train_x, train_y, "train"), (eval_x, eval_y, "t10k")):
        if images.dim() != 3 or len(images) != len(labels) or (len(labels) and int(labels.max()) > 9):
            raise UserError(f"{folder}: the {split} images ({tuple(images.shape)}) and labels "
                            f"({len(labels)}, values 0–9) do not match")
    return _mnist_data("mnist", train_x, train_y, eval_x, eval_y)


def _cifar10(cfg: DataConfig) -> Data:
    from torchvision.datasets import CIFAR10

    folder = folder_of(cfg)
    if not all((folder / name).is_file() for name in CIFAR10_FILES):
        if not cfg.download:
            raise UserError(missing_message(cfg))
        _download_cifar10(cfg, CIFAR10)
    # The batches are read by a restricted unpickler that admits only arrays, lists and strings: a
    # file that asks to run code is refused, whoever made it; honest re-packed batches still load.
    train = [_cifar_batch(folder / name) for name, _ in CIFAR10.train_list]
    test = _cifar_batch(folder / CIFAR10.test_list[0][0])
    meta = _cifar_meta(folder / CIFAR10.meta["filename"], CIFAR10.meta["key"])

    def images(rows: Tensor) -> Tensor:
        return rows.view(-1, 3, 32, 32).contiguous()  # rows: R plane, G plane, B plane → (N, 3, 32, 32)

    return Data(
        name="cifar10",
        task="classification",
        train_x=images(torch.cat([x for x, _ in train])),
        train_y=torch.cat([y for _, y in train]),
        eval_x=images(test[0]),
        eval_y=test[1],
        classes=meta,
        mean=_CIFAR10_STATS[0],
        std=_CIFAR10_STATS[1],
    )


def _reason(exc: BaseException) -> str:
    return ((str(exc).strip().splitlines() or [type(exc).__name__])[-1] or type(exc).__name__)[:160]


def _unpickle(path: Path, what: str) -> Any:
    from . import safe_pickle

    try:
        return safe_pickle.load(path)
    except safe_pickle.UnsafePickleError as exc:
        raise UserError(f"{path}: refused, the file asks to run code ({exc}); a {what} holds only "
                        "arrays, lists and strings") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except Exception as exc:  # truncated or not a pickle at all
        raise UserError(f"{path}: not a {what} ({_reason(exc)})") from None


def _cifar_batch(path: Path) -> tuple[Tensor, Tensor]:
    """One CIFAR python batch → uint8 rows (N, 3072) and labels (N,), checked."""
    import numpy as np

    batch = _unpickle(path, "CIFAR-10 python batch")
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise UserError(f"{path}: not a CIFAR-10 python batch (expected a dict with 'data' and 'labels')")
    rows, labels = batch["data"], batch["labels"]
    if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != 3072:
        shape = getattr(rows, "shape", None)
        raise UserError(f"{path}: 'data' must be a uint8 array of shape (N, 3072), got "
                        f"{type(rows).__name__} {getattr(rows, 'dtype', '')} {shape}".rstrip())
    try:
        label_array = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{path}: 'labels' must be a list of integers") from None
    if label_array.shape != (len(rows),):
        raise UserError(f"{path}: {len(rows)} images but {label_array.size} labels")
    if len(label_array) and (label_array.min() < 0 or label_array.max() > 9):
        raise UserError(f"{path}: labels must lie in 0–9 (found {label_array.min()}…{label_array.max()})")
    return torch.from_numpy(np.ascontiguousarray(rows)), torch.from_numpy(label_array)


def _cifar_meta(path: Path, key: str) -> list[str]:
    meta = _unpickle(path, "CIFAR-10 batches.meta file")
    names = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != 10 or not all(isinstance(n, str) for n in names):
        raise UserError(f"{path}: not a CIFAR-10 batches.meta file (expected '{key}': ten class names)")
    return names


def _download_cifar10(cfg: DataConfig, cls: Any) -> None:
    """torchvision's download of the official archive (MD5-checked), then unpacked into ``data.root``."""
    from torchvision.datasets.utils import download_and_extract_archive

    folder = folder_of(cfg)
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            download_and_extract_archive(cls.url, cfg.root, filename=cls.filename, md5=cls.tgz_md5)
    except Exception as exc:  # URLError, OSError, a checksum mismatch, tarfile errors …
        for path in missing:  # leave no empty folders behind
            with contextlib.suppress(OSError):
                path.rmdir()
        raise UserError(missing_message(cfg, _reason(exc))) from None


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
        raise UserError(missing_message(cfg, _reason(exc) if cfg.download else None)) from None
