"""Dataset files on disk → :class:`~interp.data.tensors.Data`: the bundled MNIST sample, torchvision's
MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 (downloaded by torchvision, read here as data only), image
folders (:mod:`.folder`), your own factories (:mod:`.custom`) and the toy problems.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import struct
from collections.abc import Callable, Iterator
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..config import DataConfig
from ..errors import UserError
from .sources import DOWNLOADS, MNIST_FILES, folder_of, missing_message
from .tensors import Data

__all__ = ["Progress", "flip_labels", "load_data"]

# Per-channel mean and std of the training images (the usual published values).
_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
Progress = Callable[[str, int], contextlib.AbstractContextManager[Callable[[int], None]]]


@contextlib.contextmanager
def _no_progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    yield lambda n: None


def load_data(cfg: DataConfig, seed: int = 0, progress: Progress | None = None,
              notice: Callable[[str], None] = lambda message: None) -> Data:
    """Load the dataset ``cfg.dataset`` into memory (on the CPU; call ``.to(device)`` after).

    ``progress(description, total)`` gives a progress bar for slow loads (decoding an image folder)."""
    if cfg.dataset == "mnist-sample":
        data = _mnist_sample()
    elif cfg.dataset in ("mnist", "fashion-mnist"):
        data = _idx_dataset(cfg)
    elif cfg.dataset in ("cifar10", "cifar100"):
        data = _cifar(cfg)
    elif cfg.dataset == "folder":
        from .folder import load_folder

        data = load_folder(cfg, seed, progress or _no_progress, notice)
    elif cfg.dataset == "patches":
        from .patches import as_data

        data = as_data(seed)
    elif ":" in cfg.dataset:
        from .custom import load_custom

        data = load_custom(cfg, seed)
    else:
        from . import toy

        data = toy.as_data(cfg.dataset, points=cfg.points, noise=cfg.noise, seed=seed)
    if len(data.train_x) and len(data.eval_x) and data.train_x.shape[1:] != data.eval_x.shape[1:]:
        raise UserError(f"data.dataset {cfg.dataset}: the training inputs are {_shape(data.train_x)} each, the "
                        f"evaluation inputs {_shape(data.eval_x)}; both splits must have one shape")
    if cfg.train_limit is not None:
        data = replace(data, train_x=data.train_x[: cfg.train_limit], train_y=data.train_y[: cfg.train_limit])
    if cfg.label_noise:
        if data.task != "classification":
            raise UserError(f"data.label_noise: {cfg.dataset} is not a classification task")
        data = replace(data, train_y=flip_labels(data.train_y, cfg.label_noise, len(data.classes), seed)[0])
    return data


def flip_labels(labels: Tensor, fraction: float, classes: int, seed: int) -> tuple[Tensor, Tensor]:
    """``labels`` with ``round(fraction × N)`` of them, drawn with ``seed``, shifted to another class (by 1 to
    ``classes − 1``, drawn too); returns the new labels and the sorted positions that were changed."""
    generator = torch.Generator().manual_seed(seed + 1)
    count = round(fraction * len(labels))
    chosen = torch.randperm(len(labels), generator=generator)[:count].sort().values
    shift = torch.randint(1, max(classes, 2), (count,), generator=generator)
    flipped = labels.clone()
    flipped[chosen] = (labels[chosen].cpu() + shift).remainder(classes).to(labels.dtype).to(labels.device)
    return flipped, chosen


def _shape(x: Tensor) -> str:
    return "×".join(map(str, x.shape[1:]))


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
    train_x, train_y, eval_x, eval_y = (_read_idx_gz((folder / f"{name}.gz").read_bytes()) for name in MNIST_FILES)
    return _mnist_data("mnist-sample", train_x, train_y, eval_x, eval_y)


def _mnist_data(name: str, train_x: Tensor, train_y: Tensor, eval_x: Tensor, eval_y: Tensor,
                classes: list[str] | None = None) -> Data:
    stats = _STATS["fashion-mnist" if name == "fashion-mnist" else "mnist"]
    return Data(
        name=name,
        task="classification",
        train_x=train_x.unsqueeze(1).contiguous(),  # (N, 1, 28, 28)
        train_y=train_y.long(),
        eval_x=eval_x.unsqueeze(1).contiguous(),
        eval_y=eval_y.long(),
        classes=classes or [str(d) for d in range(10)],
        mean=stats[0],
        std=stats[1],
    )


def _idx_dataset(cfg: DataConfig) -> Data:
    """MNIST or Fashion-MNIST: four IDX files (torchvision downloads them when they are missing)."""
    from torchvision.datasets import MNIST, FashionMNIST
    from torchvision.datasets.mnist import read_image_file, read_label_file

    cls = FashionMNIST if cfg.dataset == "fashion-mnist" else MNIST
    label = DOWNLOADS[cfg.dataset].label
    folder = folder_of(cfg)
    if not all((folder / name).is_file() for name in MNIST_FILES):
        _torchvision(cls, cfg, True)  # downloads (and unpacks) the raw files, or says why not
    parts = []
    for name, reader in zip(MNIST_FILES, (read_image_file, read_label_file) * 2, strict=True):
        path = folder / name
        if not path.is_file():
            raise UserError(missing_message(cfg))
        # IDX files are parsed as numbers; torchvision's processed/*.pt caches are never read.
        try:
            parts.append(reader(str(path)))
        except Exception as exc:  # torchvision asserts on a bad magic number or shape
            raise UserError(f"{path}: not an {label} IDX file ({_reason(exc)})") from None
    (train_x, train_y, eval_x, eval_y) = parts
    for images, labels, split in ((train_x, train_y, "train"), (eval_x, eval_y, "t10k")):
        if images.dim() != 3 or len(images) != len(labels):
            raise UserError(f"{folder}: the {split} images ({tuple(images.shape)}) and labels "
                            f"({len(labels)}) do not match")
        if len(labels) and int(labels.max()) > 9:
            raise UserError(f"{folder}: the {split} labels must lie in 0–9 (found {int(labels.min())}…"
                            f"{int(labels.max())})")
    if train_x.shape[1:] != eval_x.shape[1:]:
        raise UserError(f"{folder}: the train images are {_shape(train_x)}, the t10k images {_shape(eval_x)}; "
                        "both must have one size")
    classes = list(cls.classes) if cfg.dataset == "fashion-mnist" else None
    return _mnist_data(cfg.dataset, train_x, train_y, eval_x, eval_y, classes)


def _cifar(cfg: DataConfig) -> Data:
    """CIFAR-10 or CIFAR-100, the python version (torchvision downloads it when it is missing)."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR100 if cfg.dataset == "cifar100" else CIFAR10
    label = DOWNLOADS[cfg.dataset].label
    count = 100 if cfg.dataset == "cifar100" else 10
    labels_key = "fine_labels" if cfg.dataset == "cifar100" else "labels"
    folder = folder_of(cfg)
    if not all((folder / name).is_file() for name in DOWNLOADS[cfg.dataset].files):
        if not cfg.download:
            raise UserError(missing_message(cfg))
        _download_cifar(cfg, cls)
    # The batches are read by a restricted unpickler that admits only arrays, lists and strings: a
    # file that asks to run code is refused, whoever made it; honest re-packed batches still load.
    train = [_cifar_batch(folder / name, label, labels_key, count) for name, _ in cls.train_list]
    test = _cifar_batch(folder / cls.test_list[0][0], label, labels_key, count)
    meta = _cifar_meta(folder / cls.meta["filename"], cls.meta["key"], label, count)

    def images(rows: Tensor) -> Tensor:
        return rows.view(-1, 3, 32, 32).contiguous()  # rows: R plane, G plane, B plane → (N, 3, 32, 32)

    return Data(
        name=cfg.dataset,
        task="classification",
        train_x=images(torch.cat([x for x, _ in train])),
        train_y=torch.cat([y for _, y in train]),
        eval_x=images(test[0]),
        eval_y=test[1],
        classes=meta,
        mean=_STATS[cfg.dataset][0],
        std=_STATS[cfg.dataset][1],
    )


def _reason(exc: BaseException) -> str:
    return ((str(exc).strip().splitlines() or [type(exc).__name__])[-1] or type(exc).__name__)[:160]


def _unpickle(path: Path, what: str) -> Any:
    from . import safe_pickle

    try:
        return safe_pickle.load(path)
    except safe_pickle.UnsafePickleError as exc:
        if exc.code:
            raise UserError(f"{path}: refused, the file asks to run code ({exc}); a {what} holds only "
                            "arrays, lists and strings") from None
        raise UserError(f"{path}: refused, the file holds {exc}, which a {what} does not") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    except Exception as exc:  # truncated or not a pickle at all
        raise UserError(f"{path}: not a {what} ({_reason(exc)})") from None


def _cifar_batch(path: Path, label: str = "CIFAR-10", labels_key: str = "labels",
                 count: int = 10) -> tuple[Tensor, Tensor]:
    """One CIFAR python batch → uint8 rows (N, 3072) and labels (N,), checked."""
    import numpy as np

    batch = _unpickle(path, f"{label} python batch")
    if not isinstance(batch, dict) or "data" not in batch or labels_key not in batch:
        raise UserError(f"{path}: not a {label} python batch (expected a dict with 'data' and '{labels_key}')")
    rows, labels = batch["data"], batch[labels_key]
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
    if len(label_array) and (label_array.min() < 0 or label_array.max() >= count):
        raise UserError(f"{path}: labels must lie in 0–{count - 1} (found {label_array.min()}…{label_array.max()})")
    return torch.from_numpy(np.ascontiguousarray(rows)), torch.from_numpy(label_array)


def _cifar_meta(path: Path, key: str, label: str = "CIFAR-10", count: int = 10) -> list[str]:
    meta = _unpickle(path, f"{label} {path.name} file")
    names = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != count or not all(isinstance(n, str) for n in names):
        raise UserError(f"{path}: not a {label} {path.name} file (expected '{key}': {count} class names)")
    return names


def _download_cifar(cfg: DataConfig, cls: Any) -> None:
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
