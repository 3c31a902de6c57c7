from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_cifar_batches, make_mnist_raw, write_idx
from interp.config import DataConfig
from interp.data import MNIST_FILES, load_data, select_probe
from interp.data.files import _read_idx_gz
from interp.errors import UserError


def test_mnist_sample_is_the_bundled_digits() -> None:
    data = load_data(DataConfig(dataset="mnist-sample"))
    assert data.train_x.shape == (5000, 1, 28, 28) and data.train_x.dtype == torch.uint8
    assert data.eval_x.shape == (1000, 1, 28, 28)
    # class counts from the sample's PROVENANCE.md
    assert torch.bincount(data.train_y).tolist() == [513, 572, 479, 494, 498, 403, 544, 538, 475, 484]
    assert torch.bincount(data.eval_y).tolist() == [104, 109, 102, 112, 99, 91, 83, 103, 103, 94]
    assert data.classes == [str(d) for d in range(10)]
    assert 0.08 < data.train_x.float().mean().item() / 255 < 0.2  # real digits: mostly black background


def test_idx_reader_round_trip(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x.gz", array, compress=True)
    assert np.array_equal(_read_idx_gz((tmp_path / "x.gz").read_bytes()).numpy(), array)


@pytest.mark.parametrize("download", [False, True])
def test_mnist_files_on_disk_load_with_or_without_download(tmp_path: Path, download: bool) -> None:
    arrays = make_mnist_raw(tmp_path / "data")
    data = load_data(DataConfig(dataset="mnist", root=str(tmp_path / "data"), download=download))
    assert data.train_x.shape == (300, 1, 28, 28) and data.eval_x.shape == (100, 1, 28, 28)
    assert np.array_equal(data.train_x[:, 0].numpy(), arrays["train"])
    assert np.array_equal(data.eval_y.numpy(), arrays["t10k_labels"])


def test_cifar10_batches_load_channels_first(tmp_path: Path) -> None:
    arrays = make_cifar_batches(tmp_path / "data")
    data = load_data(DataConfig(dataset="cifar10", root=str(tmp_path / "data"), download=False))
    assert data.train_x.shape == (200, 3, 32, 32) and data.eval_x.shape == (40, 3, 32, 32)
    first = arrays["data_batch_1"][0].reshape(3, 32, 32)  # R plane, G plane, B plane
    assert np.array_equal(data.train_x[0].numpy(), first)
    assert data.classes[0] == "airplane" and data.classes[9] == "truck"
    assert data.eval_y.tolist() == arrays["test_batch_labels"].tolist()


def test_missing_mnist_without_download_names_folder_and_files(tmp_path: Path) -> None:
    root = tmp_path / "data"
    with pytest.raises(UserError) as info:
        load_data(DataConfig(dataset="mnist", root=str(root), download=False))
    message = str(info.value)
    assert f"{root}/MNIST/raw/" in message and "data.download is false" in message
    assert all(name in message for name in MNIST_FILES)
    assert not root.exists()


def test_failed_download_is_quick_clear_and_leaves_no_empty_folders(tmp_path: Path, monkeypatch) -> None:
    from torchvision.datasets import MNIST

    # A mirror that refuses connections: the real download code, failing the way an offline machine does.
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])
    root = tmp_path / "data"
    started = time.perf_counter()
    with pytest.raises(UserError) as info:
        load_data(DataConfig(dataset="mnist", root=str(root), download=True))
    assert time.perf_counter() - started < 5
    message = str(info.value)
    assert "download failed" in message and "uncompressed" in message
    assert all(name in message for name in MNIST_FILES)
    assert "\n" not in message
    assert not root.exists()


def test_failed_cifar_download_keeps_existing_folder(tmp_path: Path, monkeypatch) -> None:
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    root = tmp_path / "data"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="cifar-10-batches-py/.*data_batch_1.*batches.meta"):
        load_data(DataConfig(dataset="cifar10", root=str(root), download=True))
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt"]


def test_normalize_and_black_baseline() -> None:
    data = load_data(DataConfig(dataset="mnist-sample"))
    x = data.normalize(data.train_x[:64])
    expected = (data.train_x[:64].float() / 255 - 0.1307) / 0.3081
    assert torch.allclose(x, expected, atol=1e-6)
    assert torch.allclose(data.denormalize(x), data.train_x[:64].float() / 255, atol=1e-6)
    black = data.black(x)
    assert torch.allclose(data.denormalize(black), torch.zeros_like(black), atol=1e-6)


def test_probe_is_fixed_per_seed_and_covers_every_class() -> None:
    data = load_data(DataConfig(dataset="mnist-sample"))
    a, b = select_probe(data, 2, seed=3), select_probe(data, 2, seed=3)
    assert torch.equal(a.indices, b.indices)
    assert a.y.tolist() == [c for c in range(10) for _ in range(2)]
    assert not torch.equal(a.indices, select_probe(data, 2, seed=4).indices)
    assert torch.equal(data.eval_y[a.indices], a.y)


def test_train_limit_cuts_training_set_only() -> None:
    data = load_data(DataConfig(dataset="mnist-sample", train_limit=700))
    assert len(data.train_x) == 700 and len(data.train_y) == 700 and len(data.eval_x) == 1000


def test_offline_check_fails_before_any_heavy_work(tmp_path: Path, monkeypatch) -> None:
    from dataclasses import replace

    from interp.data import sources

    for name in ("mnist", "cifar10"):
        monkeypatch.setitem(sources.DOWNLOADS, name, replace(sources.DOWNLOADS[name], hosts=(("127.0.0.1", 9),)))
    cfg = DataConfig(dataset="mnist", root=str(tmp_path / "data"), download=True)
    started = time.perf_counter()
    with pytest.raises(UserError, match=r"download failed \(no network: 127.0.0.1"):
        sources.check_sources(cfg)
    assert time.perf_counter() - started < 2
    assert not (tmp_path / "data").exists()
    make_mnist_raw(tmp_path / "data")
    sources.check_sources(cfg)  # files on disk: no network needed
    sources.check_sources(DataConfig(dataset="mnist", root=str(tmp_path / "data"), download=False))


def test_cli_import_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, interp.cli, interp.data.sources; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
