"""Where the downloadable datasets live on disk and where they come from.

Nothing here imports torch: :func:`check_sources` runs before the heavy imports, so a missing dataset
on an offline machine is reported in well under a second. The download itself is torchvision's.
"""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path

from ..config import DataConfig
from ..errors import UserError

__all__ = ["CIFAR10_FILES", "MNIST_FILES", "check_sources", "missing_message"]

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta")
# The hosts torchvision downloads from (MNIST mirrors; the CIFAR-10 archive).
_HOSTS = {"mnist": (("ossci-datasets.s3.amazonaws.com", 443), ("yann.lecun.com", 80)),
          "cifar10": (("www.cs.toronto.edu", 443),)}
_LABELS = {"mnist": "MNIST", "cifar10": "CIFAR-10"}


def folder_of(cfg: DataConfig) -> Path:
    """The folder torchvision reads the files from."""
    root = Path(cfg.root)
    return root / "MNIST" / "raw" if cfg.dataset == "mnist" else root / "cifar-10-batches-py"


def _names(files: tuple[str, ...]) -> str:
    return ", ".join(files[:-1]) + " and " + files[-1]


def missing_message(cfg: DataConfig, download_error: str | None = None) -> str:
    """One line: what is missing, why, and exactly which files to put where."""
    folder = folder_of(cfg)
    label = _LABELS[cfg.dataset]
    if cfg.dataset == "mnist":
        advice = f"place {_names(MNIST_FILES)} (uncompressed) in {folder}/"
    else:
        advice = (f"place {_names(CIFAR10_FILES)} (CIFAR-10 python version) in {folder}/, "
                  f"or unpack cifar-10-python.tar.gz in {cfg.root}/")
    if download_error is None:
        return f"{label} is not in {folder}/ (data.download is false): {advice}, or set data.download=true"
    return (f"{label} is not in {folder}/ and the download failed ({download_error}); {advice}, "
            "or use data.dataset=mnist-sample")


def check_sources(cfg: DataConfig, timeout: float = 3.0) -> None:
    """Fail fast, before torch is imported, when a dataset is neither on disk nor downloadable."""
    if cfg.dataset not in _HOSTS:
        return
    folder = folder_of(cfg)
    files = MNIST_FILES if cfg.dataset == "mnist" else CIFAR10_FILES
    if all((folder / name).is_file() for name in files):
        return
    if not cfg.download:
        raise UserError(missing_message(cfg))
    if cfg.dataset == "mnist" and all((folder / f"{name}.gz").is_file() for name in files):
        return  # torchvision unpacks archives that are already there
    if cfg.dataset == "cifar10" and (Path(cfg.root) / "cifar-10-python.tar.gz").is_file():
        return
    errors = []
    for host, port in _HOSTS[cfg.dataset]:
        try:
            with contextlib.closing(socket.create_connection((host, port), timeout=timeout)):
                return  # reachable: let torchvision download
        except OSError as exc:
            errors.append(f"{host}: {exc.strerror or exc}")
    raise UserError(missing_message(cfg, "no network: " + "; ".join(errors)))
