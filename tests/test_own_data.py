"""Your own data: image folders, Fashion-MNIST and CIFAR-100 files, and dataset factories."""

from __future__ import annotations

import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import make_mnist_raw
from interp.cli import app
from interp.config import DataConfig
from interp.data import load_data
from interp.errors import UserError

runner = CliRunner()
QUICK = ["--set", "train.epochs=1", "--set", "train.device=cpu"]


def sample_digits(per_class: int, classes=(0, 1, 7)) -> dict[int, np.ndarray]:
    sample = load_data(DataConfig(dataset="mnist-sample"))
    return {c: sample.train_x[sample.train_y == c][:per_class, 0].numpy() for c in classes}


def write_digit_folder(root: Path, per_class: int = 30, val: int = 0) -> dict[str, np.ndarray]:
    """train/<class>/*.png from real digits of the bundled sample (and val/<class>/ with ``val`` each)."""
    digits = sample_digits(per_class + val)
    names = {0: "zero", 1: "one", 7: "seven"}
    for c, images in digits.items():
        for split, chunk in (("train", images[:per_class]), ("val", images[per_class:])):
            if len(chunk) == 0:
                continue
            folder = root / split / names[c]
            folder.mkdir(parents=True, exist_ok=True)
            for i, pixels in enumerate(chunk):
                Image.fromarray(pixels, mode="L").save(folder / f"{i:03d}.png")
    return {names[c]: images for c, images in digits.items()}


def test_folder_with_val_is_read_exactly(tmp_path: Path) -> None:
    digits = write_digit_folder(tmp_path / "digits", per_class=12, val=4)
    data = load_data(DataConfig(dataset="folder", root=str(tmp_path / "digits")))
    assert data.classes == ["one", "seven", "zero"]  # sorted folder names
    assert data.train_x.shape == (36, 1, 28, 28) and data.eval_x.shape == (12, 1, 28, 28)
    assert data.train_x.dtype == torch.uint8
    # PNG is lossless: the digits come back exactly, class by class
    assert np.array_equal(data.train_x[data.train_y == 2][:, 0].numpy(), digits["zero"][:12])
    assert np.array_equal(data.eval_x[data.eval_y == 1][:, 0].numpy(), digits["seven"][12:])
    pixels = data.train_x.float() / 255
    assert data.mean == pytest.approx((float(pixels.mean()),), rel=1e-5)
    assert data.std == pytest.approx((float(pixels.std()),), rel=1e-5)


def test_folder_without_val_holds_out_a_seeded_fraction(tmp_path: Path) -> None:
    write_digit_folder(tmp_path / "d", per_class=20)
    a = load_data(DataConfig(dataset="folder", root=str(tmp_path / "d"), eval_fraction=0.25), seed=1)
    assert len(a.eval_x) == 15 and len(a.train_x) == 45
    b = load_data(DataConfig(dataset="folder", root=str(tmp_path / "d"), eval_fraction=0.25), seed=2)
    assert not torch.equal(a.eval_x, b.eval_x)  # another seed, another split
    both = torch.cat([a.train_x, a.eval_x]).flatten(1)
    assert len({tuple(row.tolist()) for row in both}) == 60  # nothing lost or doubled


def test_folder_dataset_trains_and_is_analysed_then_starts_from_the_cache(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "mixed"
    write_digit_folder(root, per_class=30)
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(40, 30), (20, 36), (64, 64)]):  # a few RGB JPEGs of other sizes
        colour = (rng.integers(0, 255, (h, w, 3))).astype(np.uint8)
        Image.fromarray(colour, mode="RGB").save(root / "train" / "seven" / f"photo{i}.jpg", quality=90)
    monkeypatch.chdir(tmp_path)
    args = ["train", "--set", "data.dataset=folder", "--set", f"data.root={root}", "--set", "data.image_size=28",
            "--set", "analysis.stages=[confusion, {saliency: {smoothgrad: false}}, neurons]", *QUICK]
    started = time.perf_counter()
    result = runner.invoke(app, args)
    first = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    run = tmp_path / "save" / f"{root.name}-mlp"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["confusion/accuracy"] == pytest.approx(rows[-1]["eval_accuracy"])
    assert (run / "epoch_001" / "saliency" / "saliency.png").is_file()
    cache = list((root / ".interp-cache").glob("*.pt"))
    assert len(cache) == 1
    data = load_data(DataConfig(dataset="folder", root=str(root), image_size=28))
    assert data.train_x.shape[1:] == (3, 28, 28)  # colour JPEGs among them: every image gets three channels
    assert torch.equal(data.train_x[0, 0], data.train_x[0, 1])  # a grey digit stays grey in RGB

    # the second start reads the cache: decoding would now fail
    import interp.data.folder as folder

    monkeypatch.setattr(folder, "_decode", lambda *a: pytest.fail("decoded again"))
    again = load_data(DataConfig(dataset="folder", root=str(root), image_size=28))
    assert torch.equal(again.train_x, data.train_x) and again.classes == data.classes
    started = time.perf_counter()
    assert runner.invoke(app, args).exit_code == 0
    assert time.perf_counter() - started < first * 2  # no slower (the decode itself is a small part here)
    # a changed file is noticed: the cache is rebuilt (and the old one removed)
    monkeypatch.undo()
    Image.fromarray(sample_digits(1)[0][0], mode="L").save(root / "train" / "zero" / "new.png")
    assert len(load_data(DataConfig(dataset="folder", root=str(root), image_size=28)).train_x) + \
        len(data.eval_x) == len(data.train_x) + len(data.eval_x) + 1
    assert len(list((root / ".interp-cache").glob("*.pt"))) == 1


@pytest.mark.parametrize(("damage", "message"), [
    ("unreadable", "1 image file(s) in {root} cannot be read: train/one/bad.png (not an image); fix or remove them"),
    ("truncated", "1 image file(s) in {root} cannot be read: train/one/cut.png ("),
    ("empty", "{root}/train/empty has no images (png, jpg, jpeg, bmp, gif, webp); add some or remove the folder"),
    ("sizes", "the images in {root} differ in size"),
    ("no-train", "{root} has no train/ folder"),
    ("val-class", "{root}/val/cat is not a class of {root}/train"),
])
def test_bad_folders_exit_2_with_one_line(tmp_path: Path, damage: str, message: str, monkeypatch) -> None:
    root = tmp_path / "d"
    write_digit_folder(root, per_class=5)
    if damage == "unreadable":
        (root / "train" / "one" / "bad.png").write_text("not a picture")
    elif damage == "truncated":
        good = (root / "train" / "one" / "000.png").read_bytes()
        (root / "train" / "one" / "cut.png").write_bytes(good[: len(good) // 2])
    elif damage == "empty":
        (root / "train" / "empty").mkdir()
        (root / "train" / "empty" / "notes.txt").write_text("no images here")
    elif damage == "sizes":
        Image.new("L", (30, 30)).save(root / "train" / "one" / "big.png")
    elif damage == "no-train":
        (root / "train").rename(root / "training")
    elif damage == "val-class":
        (root / "val" / "cat").mkdir(parents=True)
        Image.new("L", (28, 28)).save(root / "val" / "cat" / "x.png")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--set", "data.dataset=folder", "--set", f"data.root={root}", *QUICK])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()  # (stdout may show the decoding progress bar)
    assert len(lines) == 1 and lines[0].startswith("error: " + message.format(root=root)), result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "save").exists()


def test_fashion_mnist_from_its_own_files(tmp_path: Path) -> None:
    arrays = make_mnist_raw(tmp_path / "data", n_train=50, n_test=20)
    (tmp_path / "data" / "MNIST").rename(tmp_path / "data" / "FashionMNIST")
    data = load_data(DataConfig(dataset="fashion-mnist", root=str(tmp_path / "data"), download=False))
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot"
    assert np.array_equal(data.train_x[:, 0].numpy(), arrays["train"])
    assert np.array_equal(data.eval_y.numpy(), arrays["t10k_labels"])
    with pytest.raises(UserError, match=r"Fashion-MNIST is not in .*/FashionMNIST/raw/ \(data.download is false\)"):
        load_data(DataConfig(dataset="fashion-mnist", root=str(tmp_path / "nothing"), download=False))


def make_cifar100(root: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """The CIFAR-100 python version: root/cifar-100-python/{train,test,meta}."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    out = {}
    for name, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
        fine = rng.integers(0, 100, n)
        with (folder / name).open("wb") as handle:
            pickle.dump({"filenames": [f"{i}.png" for i in range(n)], "batch_label": name, "fine_labels": fine.tolist(),
                         "coarse_labels": (fine // 5).tolist(), "data": data}, handle, protocol=2)
        out[name], out[f"{name}_labels"] = data, fine
    with (folder / "meta").open("wb") as handle:
        pickle.dump({"fine_label_names": [f"class{i}" for i in range(100)],
                     "coarse_label_names": [f"super{i}" for i in range(20)]}, handle, protocol=2)
    return out


def test_cifar100_from_its_own_files(tmp_path: Path) -> None:
    arrays = make_cifar100(tmp_path / "data")
    data = load_data(DataConfig(dataset="cifar100", root=str(tmp_path / "data"), download=False))
    assert data.train_x.shape == (60, 3, 32, 32) and len(data.classes) == 100 and data.classes[42] == "class42"
    assert np.array_equal(data.train_x.reshape(60, -1).numpy(), arrays["train"])
    assert data.eval_y.tolist() == arrays["test_labels"].tolist()
    (tmp_path / "data" / "cifar-100-python" / "meta").write_bytes(pickle.dumps({"fine_label_names": ["a"]}))
    with pytest.raises(UserError, match="expected 'fine_label_names': 100 class names"):
        load_data(DataConfig(dataset="cifar100", root=str(tmp_path / "data"), download=False))


FACTORY = '''
import torch
from torch.utils.data import Dataset

def tensors(seed, size=8):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(40, 3, size, size, generator=g)          # floats in [0, 1]
    y = torch.arange(40) % 4
    x[y == 0, 0] = 1.0                                      # class 0 is red: learnable
    return (x[:30], y[:30]), (x[30:], y[30:]), ["red", "b", "c", "d"]

class Squares(Dataset):
    def __len__(self):
        return 12
    def __getitem__(self, i):
        from PIL import Image
        return Image.new("L", (6, 6), 40 * (i % 3)), i % 3

def datasets():
    return {"train": Squares(), "eval": Squares(), "classes": ["dark", "mid", "light"], "mean": [0.5], "std": [0.25]}

def broken():
    return 3
'''


@pytest.fixture
def factory_module(tmp_path: Path, monkeypatch) -> str:
    name = f"userdata_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield name
    sys.modules.pop(name, None)


def test_dataset_factories(factory_module: str) -> None:
    data = load_data(DataConfig(dataset=f"{factory_module}:tensors", args={"size": 6}), seed=3)
    assert data.train_x.shape == (30, 3, 6, 6) and data.train_x.dtype == torch.uint8
    assert data.classes == ["red", "b", "c", "d"] and (data.train_x[data.train_y == 0, 0] == 255).all()
    g = torch.Generator().manual_seed(3)
    assert torch.equal(data.eval_x[1:, 1:], torch.rand(40, 3, 6, 6, generator=g)[31:, 1:].mul(255).round().byte())
    squares = load_data(DataConfig(dataset=f"{factory_module}:datasets"))
    assert squares.train_x.shape == (12, 1, 6, 6) and squares.mean == (0.5,) and squares.std == (0.25,)
    assert squares.train_x[2].unique().tolist() == [80] and squares.train_y[:4].tolist() == [0, 1, 2, 0]
    with pytest.raises(UserError, match=r"must return \(train, eval, classes\)"):
        load_data(DataConfig(dataset=f"{factory_module}:broken"))


def test_factory_dataset_trains_through_the_cli(factory_module: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--set", f"data.dataset={factory_module}:tensors", *QUICK,
                                 "--set", "analysis.stages=[confusion, {saliency: {smoothgrad: false}}]"])
    assert result.exit_code == 0, result.output
    saved = (tmp_path / "save" / "tensors-mlp" / "config.yaml").read_text()
    assert f"dataset: {factory_module}:tensors" in saved
