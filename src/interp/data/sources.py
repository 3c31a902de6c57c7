"""Where the datasets live on disk and where the downloadable ones come from.

Nothing here imports torch: :func:`check_sources` runs before the heavy imports, so a missing dataset
on an offline machine (or a missing image folder) is reported in well under a second. The download
itself is torchvision's.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass
from pathlib import Path

from ..config import DataConfig
from ..errors import UserError

__all__ = ["CIFAR10_FILES", "CIFAR100_FILES", "DOWNLOADS", "MNIST_FILES", "Download", "check_sources",
           "folder_of", "missing_message"]

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta")
CIFAR100_FILES = ("train", "test", "meta")


@dataclass(frozen=True)
class Download:
    """A dataset torchvision downloads: the folder under ``data.root`` it reads, its files, the hosts
    the download comes from, and the archive that may be unpacked in ``data.root`` instead."""

    label: str
    folder: str
    files: tuple[str, ...]
    hosts: tuple[tuple[str, int], ...]
    archive: str | None = None  # a tar.gz unpacked in data.root (the CIFAR python versions)

    def advice(self, root: str) -> str:
        names = ", ".join(self.files[:-1]) + " and " + self.files[-1]
        where = f"{Path(root) / self.folder}/"
        if self.archive is None:
            return f"place {names} (uncompressed) in {where}"
        return f"place {names} ({self.label} python version) in {where}, or unpack {self.archive} in {root}/"


DOWNLOADS = {
    "mnist": Download("MNIST", "MNIST/raw", MNIST_FILES,
                      (("ossci-datasets.s3.amazonaws.com", 443), ("yann.lecun.com", 80))),
    "fashion-mnist": Download("Fashion-MNIST", "FashionMNIST/raw", MNIST_FILES,
                              (("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80),)),
    "cifar10": Download("CIFAR-10", "cifar-10-batches-py", CIFAR10_FILES, (("www.cs.toronto.edu", 443),),
                        "cifar-10-python.tar.gz"),
    "cifar100": Download("CIFAR-100", "cifar-100-python", CIFAR100_FILES, (("www.cs.toronto.edu", 443),),
                         "cifar-100-python.tar.gz"),
}


def folder_of(cfg: DataConfig) -> Path:
    """The folder torchvision reads the files from."""
    return Path(cfg.root) / DOWNLOADS[cfg.dataset].folder


def missing_message(cfg: DataConfig, download_error: str | None = None) -> str:
    """One line: what is missing, why, and exactly which files to put where."""
    spec = DOWNLOADS[cfg.dataset]
    folder = folder_of(cfg)
    advice = spec.advice(cfg.root)
    if download_error is None:
        return f"{spec.label} is not in {folder}/ (data.download is false): {advice}, or set data.download=true"
    return (f"{spec.label} is not in {folder}/ and the download failed ({download_error}); {advice}, "
            "or use data.dataset=mnist-sample")


def check_sources(cfg: DataConfig, timeout: float = 3.0) -> None:
    """Fail fast, before torch is imported, when a dataset is neither on disk nor downloadable."""
    if cfg.dataset == "folder":
        _check_folder(Path(cfg.root))
        return
    spec = DOWNLOADS.get(cfg.dataset)
    if spec is None:
        return
    folder = folder_of(cfg)
    if all((folder / name).is_file() for name in spec.files):
        return
    if not cfg.download:
        raise UserError(missing_message(cfg))
    if spec.archive is None and all((folder / f"{name}.gz").is_file() for name in spec.files):
        return  # torchvision unpacks archives that are already there
    if spec.archive is not None and (Path(cfg.root) / spec.archive).is_file():
        return
    errors = []
    for host, port in spec.hosts:
        try:
            with contextlib.closing(socket.create_connection((host, port), timeout=timeout)):
                return  # reachable: let torchvision download
        except OSError as exc:
            errors.append(f"{host}: {exc.strerror or exc}")
    raise UserError(missing_message(cfg, "no network: " + "; ".join(errors)))


def _check_folder(root: Path) -> None:
    layout = "data.root must hold train/<class>/<images> (and optionally val/<class>/<images>)"
    if not root.is_dir():
        raise UserError(f"data.root {root} is not a folder; {layout}")
    if not (root / "train").is_dir():
        raise UserError(f"{root} has no train/ folder; {layout}")
