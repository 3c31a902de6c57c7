"""Hostile files: a dataset that asks to run code, a run folder that carries script into the report."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_cifar_batches
from interp.cli import app
from interp.config import DataConfig
from interp.data import load_data, safe_pickle
from interp.errors import UserError

runner = CliRunner()


class _Payload:
    """Unpickling this calls ``os.system`` — what a hostile dataset file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def _hostile_batch(marker: Path, where: str) -> dict:
    data = np.zeros((4, 3072), dtype=np.uint8)
    if where == "meta":
        return {"label_names": [_Payload(marker)] + [str(i) for i in range(9)]}
    if where == "data":
        return {"data": _Payload(marker), "labels": [0, 1, 2, 3]}
    return {"data": data, "labels": [0, 1, 2, 3], "batch_label": _Payload(marker)}


@pytest.mark.parametrize(("file", "where"), [("data_batch_1", "data"), ("data_batch_3", "label"),
                                             ("test_batch", "label"), ("batches.meta", "meta")])
def test_cifar_file_that_runs_code_is_refused_through_the_cli(tmp_path: Path, file: str, where: str,
                                                              monkeypatch) -> None:
    root = tmp_path / "data"
    make_cifar_batches(root)
    marker = tmp_path / "PWNED"
    with (root / "cifar-10-batches-py" / file).open("wb") as handle:
        pickle.dump(_hostile_batch(marker, where), handle, protocol=2)
    # the payload really runs when the file is unpickled the ordinary way
    pickle.loads((root / "cifar-10-batches-py" / file).read_bytes())
    assert marker.exists()
    marker.unlink()

    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--set", "data.dataset=cifar10", "--set", f"data.root={root}",
                                 "--set", "data.download=false", "--set", "analysis.stages=[confusion]"])
    assert not marker.exists()
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {root / 'cifar-10-batches-py' / file}: refused, the file asks to run code")
    assert "posix.system" in lines[0] or "os.system" in lines[0]
    assert not (tmp_path / "save").exists() or not any((tmp_path / "save").iterdir())


def test_hostile_batch_through_a_real_subprocess(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_cifar_batches(root)
    marker = tmp_path / "PWNED"
    with (root / "cifar-10-batches-py" / "data_batch_2").open("wb") as handle:
        pickle.dump(_hostile_batch(marker, "data"), handle)  # the newest protocol, too
    proc = subprocess.run([sys.executable, "-m", "interp", "train", "--save-dir", str(tmp_path / "save"),
                           "--set", "data.dataset=cifar10", "--set", f"data.root={root}",
                           "--set", "data.download=false"], capture_output=True, text=True, timeout=120)
    assert not marker.exists()
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "refused, the file asks to run code" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_honest_batches_in_any_protocol_still_load(tmp_path: Path, protocol: int) -> None:
    arrays = make_cifar_batches(tmp_path / "data")
    folder = tmp_path / "data" / "cifar-10-batches-py"
    for name in ("data_batch_1", "batches.meta"):  # re-pack honestly with another protocol
        obj = pickle.loads((folder / name).read_bytes())
        (folder / name).write_bytes(pickle.dumps(obj, protocol=protocol))
    data = load_data(DataConfig(dataset="cifar10", root=str(tmp_path / "data"), download=False))
    assert np.array_equal(data.train_x[:40].reshape(40, -1).numpy(), arrays["data_batch_1"])
    assert data.classes[3] == "cat"


@pytest.mark.parametrize("protocol", [2, 5])
def test_honest_batches_with_numpy_integer_labels_load(tmp_path: Path, protocol: int) -> None:
    """A batch re-packed with numpy holds its labels as numpy integers (pickled as numpy scalars): plain data,
    admitted like arrays; a scalar of an object dtype or with the wrong byte count is still refused."""
    make_cifar_batches(tmp_path / "data")
    folder = tmp_path / "data" / "cifar-10-batches-py"
    rows = np.arange(3 * 3072, dtype=np.uint64).astype(np.uint8).reshape(3, 3072)
    labels = [np.int64(7), np.int32(9), np.uint8(1)]
    (folder / "test_batch").write_bytes(pickle.dumps({"data": rows, "labels": labels}, protocol=protocol))
    data = load_data(DataConfig(dataset="cifar10", root=str(tmp_path / "data"), download=False))
    assert data.eval_y.tolist() == [7, 9, 1] and np.array_equal(data.eval_x.reshape(3, -1).numpy(), rows)
    with pytest.raises(safe_pickle.UnsafePickleError, match="an array whose data does not match its shape"):
        safe_pickle.loads(pickle.dumps(_ScalarWith(np.dtype("i8"), b"\x07\x00"), protocol=protocol))
    with pytest.raises(safe_pickle.UnsafePickleError, match="an array of dtype object"):
        safe_pickle.loads(pickle.dumps(_ScalarWith(np.dtype(object), b"\0" * 8), protocol=protocol))


class _ScalarWith:
    """Pickles as numpy's ``scalar(dtype, raw)`` with parts chosen by the test."""

    def __init__(self, dtype: object, raw: bytes) -> None:
        self.dtype, self.raw = dtype, raw

    def __reduce__(self):  # type: ignore[no-untyped-def]
        try:
            from numpy._core.multiarray import scalar
        except ImportError:  # numpy < 2
            from numpy.core.multiarray import scalar
        return (scalar, (self.dtype, self.raw))


def test_python2_style_batch_loads(tmp_path: Path) -> None:
    """The official batches are Python 2 pickles: byte-string keys and text decoded as latin-1."""
    make_cifar_batches(tmp_path / "data")
    folder = tmp_path / "data" / "cifar-10-batches-py"
    rows = np.arange(2 * 3072, dtype=np.uint64).astype(np.uint8).reshape(2, 3072)
    # protocol 2 with the array's bytes as a latin-1 text string, as Python 2's cPickle wrote them
    payload = pickle.dumps({"data": rows, "labels": [7, 9]}, protocol=2)
    assert safe_pickle.loads(payload)["labels"] == [7, 9]
    (folder / "test_batch").write_bytes(payload)
    data = load_data(DataConfig(dataset="cifar10", root=str(tmp_path / "data"), download=False))
    assert data.eval_y.tolist() == [7, 9] and np.array_equal(data.eval_x.reshape(2, -1).numpy(), rows)


def test_object_arrays_are_refused() -> None:
    payload = pickle.dumps(np.array(["a", 1], dtype=object), protocol=2)
    with pytest.raises(safe_pickle.UnsafePickleError):
        safe_pickle.loads(payload)


@pytest.mark.parametrize(("content", "message"), [
    (b"", "not a CIFAR-10 python batch"),
    (b"\x80\x02}q\x00(X\x04\x00\x00", "not a CIFAR-10 python batch"),  # cut short
    (pickle.dumps([1, 2, 3]), "expected a dict with 'data' and 'labels'"),
    (pickle.dumps({"data": np.zeros((2, 3072), np.float32), "labels": [0, 1]}), "'data' must be a uint8 array"),
    (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}), "2 images but 1 labels"),
    (pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}), "labels must lie in 0–9"),
])
def test_corrupt_batch_names_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    make_cifar_batches(tmp_path / "data")
    path = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_4"
    path.write_bytes(content)
    with pytest.raises(UserError) as info:
        load_data(DataConfig(dataset="cifar10", root=str(tmp_path / "data"), download=False))
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


# -- the report -------------------------------------------------------------------------------------
SCRIPT = "<script>document.body.insertAdjacentHTML('beforeend','<p id=pwned1>')</script>"
IMG = "\"><img src=x onerror=\"document.body.insertAdjacentHTML('beforeend','<p id=pwned2>')\">"
NAME = "\"><img src=x onerror=alert(1)>"  # no '/': it must be usable as a file or folder name


class _Elements:
    """Every element and attribute of a page, as an HTML parser sees them."""

    def __init__(self, text: str) -> None:
        from html.parser import HTMLParser

        self.tags: list[str] = []
        self.attributes: list[tuple[str, str]] = []
        outer = self

        class Parser(HTMLParser):
            def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
                outer.tags.append(tag)
                outer.attributes.extend((k, v or "") for k, v in attrs)

        Parser().feed(text)


def _hostile_run(root: Path) -> Path:
    import json

    import yaml
    from PIL import Image

    run = root / "hostile"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({
        "name": SCRIPT, "seed": IMG,
        "data": {"dataset": SCRIPT}, "model": {"arch": "mlp", "hidden": [SCRIPT], "activation": IMG},
        "train": {"epochs": IMG, "optimizer": SCRIPT, "lr": IMG},
        "analysis": {"stages": [SCRIPT, {IMG: {"x": 1}}, NAME]},
    }))
    rows = [
        {"epoch": SCRIPT, "train_loss": IMG, "eval_loss": SCRIPT, "train_accuracy": IMG, "eval_accuracy": SCRIPT,
         "seconds": IMG, SCRIPT: IMG},
        {"epoch": 1, "train_loss": 0.5, "eval_loss": 0.4, "train_accuracy": 0.8, "eval_accuracy": 0.9,
         "seconds": 1.0, IMG: SCRIPT},
        {"epoch": IMG, "eval_accuracy": [SCRIPT], "seconds": {IMG: SCRIPT}},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    png = Image.new("RGB", (8, 8), (200, 30, 30))
    for epoch in (0, 1):
        for stage in ("trust", NAME):
            (run / f"epoch_{epoch:03d}" / stage).mkdir(parents=True)
            png.save(run / f"epoch_{epoch:03d}" / stage / f"{NAME}.png")
    (run / "epoch_001" / "trust" / "summary.json").write_text(json.dumps({
        "title": SCRIPT, "epoch": IMG, "columns": [SCRIPT, IMG], "notes": [SCRIPT, IMG],
        "rows": [[SCRIPT, 0.5, IMG], [IMG, None, SCRIPT], IMG],
    }))
    (run / "epoch_001" / NAME / "summary.json").write_text(json.dumps({"rows": IMG, "title": SCRIPT}))
    (run / "animations").mkdir()
    png.save(run / "animations" / f"{NAME}.png")
    (run / "animations" / f"{NAME}.mp4").write_bytes(b"")
    (run / "analysis" / NAME / NAME).mkdir(parents=True)
    png.save(run / "analysis" / NAME / NAME / f"{NAME}.png")
    return run


def test_report_carries_no_script_from_a_hostile_run_folder(tmp_path: Path) -> None:
    from interp.report import build_report

    run = _hostile_run(tmp_path)
    page_path = build_report(run)
    text = page_path.read_text(encoding="utf-8")
    page = _Elements(text)
    assert "script" not in page.tags
    assert not [k for k, _ in page.attributes if k.startswith("on")], page.attributes
    assert "pwned" not in " ".join(v for _, v in page.attributes)  # not even inside an attribute's value
    assert page.tags.count("img") >= 6  # the hostile file names are still shown, as links that work
    for key, value in page.attributes:
        if key in ("src", "href") and not value.startswith("#"):
            from urllib.parse import unquote

            assert (page_path.parent / unquote(value)).exists(), value
    # the payloads are shown as text, escaped
    assert "&lt;script&gt;" in text and "&#34;&gt;&lt;img" in text


def test_hostile_report_in_a_real_browser(tmp_path: Path) -> None:
    import shutil

    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("needs the chromium browser (Debian package chromium)")
    from interp.report import build_report

    page_path = build_report(_hostile_run(tmp_path))
    profile = tmp_path / "profile"
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          f"--user-data-dir={profile}", "--virtual-time-budget=3000", "--dump-dom",
                          page_path.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout
    assert "<h1>" in dom and "hostile" in dom  # the page did render
    page = _Elements(dom)
    assert "script" not in page.tags and not [k for k, _ in page.attributes if k.startswith("on")]
    assert 'id="pwned1"' not in dom and 'id="pwned2"' not in dom  # no payload ran


class _ForgedDType:
    """Pickles as numpy.dtype('V8') followed by a state that gives it a field far outside the array."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        state = (3, "|", None, ("a",), {"a": (np.dtype("<i8"), 1 << 30)}, 8, 1, 0)
        return (np.dtype, ("V8", False, True), state)


class _ArrayWith:
    def __init__(self, dtype: object, raw: bytes, shape: tuple) -> None:
        self.dtype, self.raw, self.shape = dtype, raw, shape

    def __reduce__(self):  # type: ignore[no-untyped-def]
        try:
            from numpy._core.multiarray import _reconstruct
        except ImportError:  # numpy < 2
            from numpy.core.multiarray import _reconstruct
        return (_reconstruct, (np.ndarray, (0,), b"b"), (1, self.shape, self.dtype, False, self.raw))


@pytest.mark.parametrize(("labels", "why"), [
    (_ArrayWith(_ForgedDType(), b"\0" * 8, (1,)), "an array dtype with fields"),
    (_ArrayWith(np.dtype("u1"), b"\0" * 3, (8,)), "an array whose data does not match its shape"),
    (_ArrayWith(np.dtype("u1"), b"\0" * 4, (2, -2)), "an array shape (2, -2)"),
])
def test_forged_arrays_are_refused_without_touching_memory(tmp_path: Path, labels: object, why: str) -> None:
    """numpy's own dtype.__setstate__ would accept a field at offset 2**30 (reading outside the array);
    the reader never lets numpy apply a pickled state: each array is rebuilt from checked parts."""
    make_cifar_batches(tmp_path / "data")
    path = tmp_path / "data" / "cifar-10-batches-py" / "data_batch_1"
    path.write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": labels}, protocol=2))
    with pytest.raises(UserError, match=f"refused, the file holds {re.escape(why)}, which a CIFAR-10 python batch"):
        load_data(DataConfig(dataset="cifar10", root=str(tmp_path / "data"), download=False))


@pytest.mark.parametrize("link", ["report", ".lock", "metrics.jsonl"])
def test_links_planted_in_a_run_folder_are_not_written_through(tmp_path: Path, link: str) -> None:
    from conftest import quick_config
    from interp.train import fit

    run = fit(quick_config("train.epochs=1"), save_dir=tmp_path / "save").run_dir
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "index.html").write_text("mine")
    (victim / "file").write_text("mine")
    target = run / link
    if target.is_dir():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    target.symlink_to(victim if link == "report" else victim / "file")
    command = ["report", str(run)] if link == "report" else ["train", "--resume", str(run), "--set", "train.epochs=2"]
    result = runner.invoke(app, command)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (f"error: run {run}: {link} is a symbolic link; interp does not write through "
                                     "links in a run folder (remove it)")
    assert (victim / "index.html").read_text() == "mine" and (victim / "file").read_text() == "mine"
