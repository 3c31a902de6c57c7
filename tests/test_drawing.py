"""The drawing worker: the same figures as drawing in the loop, failures kept apart, nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from conftest import default_sigint, quick_config
from interp.analysis.sink import RunSink
from interp.train import fit


@pytest.fixture(autouse=True)
def mark(tmp_path: Path, monkeypatch) -> str:
    """Workers started by this test carry this mark in their environment (others may run beside it)."""
    monkeypatch.setenv("INTERP_TEST_MARK", str(tmp_path))
    return str(tmp_path)


def drawing_workers() -> list[int]:
    """Pids of the drawing workers this test started (found by the mark in their environment)."""
    mark = f"INTERP_TEST_MARK={os.environ['INTERP_TEST_MARK']}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"interp.analysis.drawing" in cmdline and mark in environ:
                found.append(int(entry.name))
    return found


def images(run: Path) -> dict[str, list[tuple[int, bytes]]]:
    events = event_accumulator.EventAccumulator(str(run), size_guidance={"images": 0})
    events.Reload()
    return {tag: [(e.step, e.encoded_image_string) for e in events.Images(tag)] for tag in events.Tags()["images"]}


def test_the_worker_draws_the_same_files_and_events_as_the_loop(tmp_path: Path) -> None:
    stages = "analysis.stages=[confusion,weights,{trust: {images: 4, steps: 4}},neurons]"
    runs = {}
    for worker in (False, True):
        cfg = quick_config("train.epochs=1", "data.train_limit=300", stages, f"analysis.drawing_worker={worker}")
        runs[worker] = fit(cfg, save_dir=tmp_path / str(worker)).run_dir
    pngs = {worker: {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*.png"))}
            for worker, run in runs.items()}
    assert len(pngs[False]) >= 8 and pngs[True] == pngs[False]  # byte for byte, every figure of both epochs
    assert images(runs[True]) == images(runs[False])  # and TensorBoard holds the same PNGs at the same steps
    assert not (runs[True] / "errors.log").exists()
    assert not drawing_workers()


VIEWS = """
import time
import numpy as np
from interp.analysis.records import register_view
from interp.plotting import TileSheet

@register_view
def boom(value):
    return 1 / value

@register_view
def sheet(values, seconds=0.0):
    time.sleep(seconds)
    tile = TileSheet(1, 1, values.shape)
    tile.put(0, 0, np.repeat(values[..., None], 3, axis=2).astype(np.uint8))
    return tile.png("a sheet")
"""


@pytest.fixture
def views(tmp_path: Path, monkeypatch) -> Any:
    """A module of views the worker can import (as a stage of the user's own would have)."""
    (tmp_path / "testviews.py").write_text(VIEWS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    import importlib

    return importlib.import_module("testviews")


def write_record(sink: RunSink, folder: str, view: Any, scale: Any = None, **fields: Any) -> str:
    from interp.analysis.records import Record, encode_record, view_name

    record = Record(stage="test", epoch=0, figures={"figure": {"view": view_name(view), "scale": scale,
                                                               "fields": fields}})
    sink.file(f"{folder}/record.npz", encode_record(record))
    return f"{folder}/record.npz"


def test_a_figure_that_cannot_be_drawn_is_logged_and_the_others_are_written(tmp_path: Path, views: Any) -> None:
    sink = RunSink(tmp_path, drawing_worker=True)
    bad = write_record(sink, "bad", views.boom, value=0)  # raises ZeroDivisionError in the worker
    good = write_record(sink, "good", views.sheet, values=np.full((4, 4), 200, dtype=np.uint8))
    sink.figure(bad, "figure", "bad.png", "bad", 0, imports=("testviews",))
    sink.figure(good, "figure", "good.png", "good", 3, imports=("testviews",))
    sink.close()
    assert (tmp_path / "good.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "bad.png").exists()
    log = (tmp_path / "errors.log").read_text()
    assert "figure bad.png (step 0) was not drawn: ZeroDivisionError: division by zero" in log
    assert [step for step, _ in images(tmp_path)["good"]] == [3]


def test_closing_after_an_interruption_keeps_what_is_drawn_and_stops_the_worker(tmp_path: Path, views: Any) -> None:
    sink = RunSink(tmp_path, drawing_worker=True)
    quick = write_record(sink, "quick", views.sheet, values=np.zeros((4, 4), dtype=np.uint8))
    slow = write_record(sink, "slow", views.sheet, values=np.zeros((4, 4), dtype=np.uint8), seconds=120.0)
    sink.figure(quick, "figure", "first.png", "first", 0, imports=("testviews",))
    sink.wait()
    sink.figure(slow, "figure", "slow.png", "slow", 1, imports=("testviews",))
    assert drawing_workers()
    started = time.perf_counter()
    sink.close(finish=False)
    assert time.perf_counter() - started < 30
    assert (tmp_path / "first.png").is_file() and not (tmp_path / "slow.png").exists()
    assert not drawing_workers()


def test_the_worker_never_runs_the_users_script(tmp_path: Path) -> None:
    """A script without a __main__ guard (as most training scripts are) starts the worker; the worker
    must not import it again (multiprocessing's spawn would)."""
    script = tmp_path / "loop.py"
    script.write_text(
        "import torch\nfrom torch import nn\nfrom interp import Analyzer\n"
        "open('started', 'a').write('x')\n"
        "torch.manual_seed(0)\n"
        "model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))\n"
        "x, y = torch.randn(30, 1, 4, 4), torch.arange(30) % 3\n"
        "analyzer = Analyzer('save/mine', eval_data=(x, y), classes=['a', 'b', 'c'], stages=['confusion'],\n"
        "                    notice=lambda m: None)\n"
        "analyzer.run(model, epoch=0)\n")  # no close(): the figures still land when the script ends
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "started").read_text() == "x"
    assert (tmp_path / "save" / "mine" / "epoch_000" / "confusion" / "confusion.png").is_file()
    assert not drawing_workers()


def test_a_signal_during_training_stops_the_worker(tmp_path: Path) -> None:
    (tmp_path / "slow.py").write_text(
        "import time\nfrom interp.stages import Stage\n"
        "class Slow(Stage):\n    name = 'slow'\n    description = 'sleeps'\n    needs = frozenset()\n"
        "    def run(self, ctx):\n        if ctx.epoch >= 1:\n            open('sleeping', 'w').close()\n"
        "            time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-m", "interp", "train", "--set", "train.epochs=3", "--set",
                             "data.train_limit=300", "--set", "train.device=cpu", "--set",
                             "analysis.stages=[confusion,'slow:Slow']"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(tmp_path)},
                            preexec_fn=default_sigint)
    confusion = tmp_path / "save" / "mnist-mlp" / "epoch_000" / "confusion" / "confusion.png"
    deadline = time.time() + 120
    while not ((tmp_path / "sleeping").exists() and confusion.exists()) and time.time() < deadline:
        time.sleep(0.2)
    if not drawing_workers():
        proc.kill()
        pytest.fail("no drawing worker while the run was in its epoch-1 analysis")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)  # generous: the machine may be shared and busy
    assert proc.returncode == 130, err
    assert confusion.read_bytes()[:4] == b"\x89PNG"  # epoch 0's figure, drawn before the signal, is kept
    assert not drawing_workers()


def test_the_training_process_leaves_drawing_libraries_to_the_worker(tmp_path: Path) -> None:
    """Every default stage on the MLP: the figures are built by the worker, so the training process never
    imports scikit-learn or scipy.stats (seconds of import on a small machine; the worker's PCA and t-SNE
    need them); the worker was started and did draw them."""
    script = (
        "import sys\n"
        "from interp.config import load_config\n"
        "from interp.train import fit\n"
        "cfg = load_config(None, ['train.epochs=1', 'data.train_limit=300', 'train.device=cpu', 'analysis.stages=["
        "confusion, saliency, integrated_gradients, weights, neurons, activations, "
        "{embeddings: {points: 60, perplexity: 5}}, {trust: {images: 12}}]'])\n"
        f"fit(cfg, save_dir={str(tmp_path)!r}, name='r')\n"
        "print(sorted(m for m in ('sklearn', 'scipy.stats') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    drawn = {p.relative_to(tmp_path / "r" / "epoch_001").as_posix() for p in (tmp_path / "r" / "epoch_001").rglob("*.png")}
    assert {"confusion/confusion.png", "saliency/saliency.png", "integrated_gradients/integrated_gradients.png",
            "weights/weights.png", "neurons/neurons.png", "activations/activations.png", "embeddings/embeddings.png",
            "trust/deletion_insertion.png", "trust/randomization_maps.png"} <= drawn
