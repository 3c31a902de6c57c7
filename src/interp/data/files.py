"""Dataset files on disk → :class:`~interp.data.tensors.Data`: the bundled MNIST sample, torchvision's
MNIST and CIFAR-10 (downloaded by torchvision, read here as data only), and the toy problems.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import struct
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import DataConfig
from ..errors import UserError
from .sources import CIFAR10_FILES, MNIST_FILES, folder_of, missing_message
from .tensors import Data

__all__ = ["load_data"]

_MNIST_STATS = ((0.1307,), (0.3081,))
_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def load_data(cfg: DataConfig, seed: int = 0) -> Data:
    """Load the dataset ``cfg.dataset`` into memory (on the CPU; call ``.to(device)`` after)."""
    if cfg.dataset == "mnist-sample":
        data = _mnist_sample()
    elif cfg.dataset == "mnist":
        data = _mnist(cfg)
    elif cfg.dataset == "cifar10":
        data = _cifar10(cfg)
    else:
        from . import toy

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
