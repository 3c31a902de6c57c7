"""Shared fixtures: tiny datasets written in their real on-disk formats, quick configs."""

from __future__ import annotations

import gzip
import pickle
import signal
import struct
from pathlib import Path

import numpy as np
import pytest

from interp.config import Config, load_config


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """Write a uint8 array in the IDX format MNIST uses (big-endian header, then the bytes)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def make_mnist_raw(root: Path, n_train: int = 300, n_test: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """torchvision's layout: root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte (uncompressed).

    Each digit class gets its own bright 7×7 square, so a model can learn it in one epoch."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            r, c = divmod(int(label), 5)
            images[i, 3 + 12 * r: 10 + 12 * r, 1 + 5 * c: 6 + 5 * c] = 255
        write_idx(raw / f"{split}-images-idx3-ubyte", images)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels)
        arrays[split] = images
        arrays[f"{split}_labels"] = labels
    return arrays


def make_cifar_batches(root: Path, per_batch: int = 40, seed: int = 0) -> dict[str, np.ndarray]:
    """The CIFAR-10 python version: root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, per_batch)
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32)).astype(np.uint8)  # rows: R plane, G plane, B plane
        with (folder / name).open("wb") as handle:
            pickle.dump({"batch_label": name, "labels": labels.tolist(), "data": data,
                         "filenames": [f"{name}_{i}.png" for i in range(per_batch)]}, handle)
        out[name] = data
        out[f"{name}_labels"] = labels
    with (folder / "batches.meta").open("wb") as handle:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}, handle)
    return out


def default_sigint() -> None:
    """In the child: Ctrl-C as a terminal delivers it, even when these tests run in a background job
    (which starts with SIGINT ignored, and a child would inherit that)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def mnist_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    make_mnist_raw(root)
    return root


def quick_config(*overrides: str) -> Config:
    """The default config cut down for tests: 2 epochs on 1,000 sample digits, confusion only."""
    return load_config(None, ["train.epochs=2", "data.train_limit=1000", "train.device=cpu",
                              "analysis.stages=[confusion]", *overrides])
