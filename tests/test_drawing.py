"""The drawing worker: the same figures as drawing in the loop, failures kept apart, nothing left behind."""

from __future__ import annotations

import operator
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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


def test_a_figure_that_cannot_be_drawn_is_logged_and_the_others_are_written(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    sink = RunSink(tmp_path, drawing_worker=True)
    sink.figure("bad.png", "bad", (operator.truediv, (1, 0)), 0)  # raises ZeroDivisionError in the worker
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    sink.figure("good.png", "good", fig, 3)
    sink.close()
    assert (tmp_path / "good.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "bad.png").exists()
    log = (tmp_path / "errors.log").read_text()
    assert "figure bad.png (step 0) was not drawn: ZeroDivisionError: division by zero" in log
    assert [step for step, _ in images(tmp_path)["good"]] == [3]


def test_closing_after_an_interruption_keeps_what_is_drawn_and_stops_the_worker(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    sink = RunSink(tmp_path, drawing_worker=True)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    sink.figure("first.png", "first", fig, 0)
    sink.wait()
    slow, ax = plt.subplots(figsize=(20, 20))
    rng = np.random.default_rng(0)
    for _ in range(60):  # far more than a few seconds to lay out and rasterize
        ax.scatter(*rng.random((2, 200_000)), s=40, alpha=0.1)
    sink.figure("slow.png", "slow", slow, 1)
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
    imports interp's plotting module, scikit-learn or scipy.stats (seconds of import on a small machine;
    Captum imports pyplot by itself); the worker was started and did draw them."""
    script = (
        "import sys\n"
        "from interp.config import load_config\n"
        "from interp.train import fit\n"
        "cfg = load_config(None, ['train.epochs=1', 'data.train_limit=300', 'train.device=cpu', 'analysis.stages=["
        "confusion, saliency, integrated_gradients, weights, neurons, activations, "
        "{embeddings: {points: 60, perplexity: 5}}, {trust: {images: 12}}]'])\n"
        f"fit(cfg, save_dir={str(tmp_path)!r}, name='r')\n"
        "print(sorted(m for m in ('interp.plotting', 'sklearn', 'scipy.stats') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    drawn = {p.relative_to(tmp_path / "r" / "epoch_001").as_posix() for p in (tmp_path / "r" / "epoch_001").rglob("*.png")}
    assert {"confusion/confusion.png", "saliency/saliency.png", "integrated_gradients/integrated_gradients.png",
            "weights/weights.png", "neurons/neurons.png", "activations/activations.png", "embeddings/embeddings.png",
            "trust/deletion_insertion.png", "trust/randomization_maps.png"} <= drawn


def test_figures_still_queued_at_close_are_shared_with_helpers() -> None:
    """Eight slow jobs, then close(): a helper child takes part of the queue, every job is written once,
    and no child is left."""
    from interp.analysis.drawing import DrawingWorker

    slow = "(__import__('time').sleep(0.4), __import__('os').getpid().to_bytes(8, 'big'))[1]"
    worker = DrawingWorker(helpers=1)
    worker.start()
    done: dict[int, int] = {}
    for i in range(8):
        worker.submit((eval, (slow,)), lambda png, i=i: done.__setitem__(i, int.from_bytes(png, "big")),
                      lambda why: pytest.fail(why))
    worker.close()
    assert sorted(done) == list(range(8))
    assert len(set(done.values())) == 2  # the first child and one helper
    assert os.getpid() not in done.values()
    assert drawing_workers() == []


def test_the_caller_draws_figures_still_queued_at_close_when_asked() -> None:
    """``caller_draws``: close() draws waiting jobs in the calling thread beside the child instead of
    starting a helper; every job is written once, a failing one fails alone, and no child is left."""
    from interp.analysis.drawing import DrawingWorker

    slow = "(__import__('time').sleep(0.3), __import__('os').getpid().to_bytes(8, 'big'))[1]"
    worker = DrawingWorker(helpers=1, caller_draws=True)
    worker.start()
    done: dict[int, int] = {}
    failed: list[str] = []
    for i in range(8):
        worker.submit((eval, (slow,)), lambda png, i=i: done.__setitem__(i, int.from_bytes(png, "big")),
                      lambda why: pytest.fail(why))
    worker.submit((eval, ("1 / 0",)), lambda png: pytest.fail("drawn"), failed.append)
    worker.close()
    assert sorted(done) == list(range(8))
    pids = set(done.values())
    assert os.getpid() in pids and len(pids) == 2  # the caller and the one child, no helper
    assert failed == ["ZeroDivisionError: division by zero"]
    assert drawing_workers() == []


def test_a_caller_drawing_at_close_never_waits_for_a_figure_kept_in_the_childs_pipe() -> None:
    """Once the caller draws at close, the child is given one figure at a time instead of keeping the next
    one in its pipe: when the queue runs dry the caller does not wait for a figure the child has not even
    begun. Here the child takes 0.5 s a figure and the caller 0.1 s: the child ends at most the one figure
    it was given before close after the caller (without that, one more: about 1 s after)."""
    from interp import plotting  # noqa: F401 — imported by the caller's first figure: not timed here
    from interp.analysis.drawing import DrawingWorker

    job = (f"(__import__('time').sleep(0.1 if __import__('os').getpid() == {os.getpid()} else 0.5), "
           "repr((__import__('os').getpid(), __import__('time').time())).encode())[1]")
    worker = DrawingWorker(helpers=1, caller_draws=True)
    ready: list[bytes] = []
    worker.submit((eval, ("b''",)), ready.append, lambda why: pytest.fail(why))
    assert worker.wait(timeout=60) and ready == [b""]  # the child is up: the next two go into its hands and pipe
    ends: list[tuple[int, float]] = []
    for _ in range(8):
        worker.submit((eval, (job,)), lambda png: ends.append(eval(png)), lambda why: pytest.fail(why))
    worker.close()
    caller = max(end for pid, end in ends if pid == os.getpid())
    child = max(end for pid, end in ends if pid != os.getpid())
    assert len(ends) == 8 and child - caller < 0.75
    assert drawing_workers() == []


def test_a_helper_started_at_close_beside_the_caller_takes_one_figure_at_a_time() -> None:
    """A helper started at close, while the caller draws too, is given one figure at a time from its start:
    it does not hold a second one while it is still importing matplotlib, which the caller, much faster
    here, would otherwise wait for at the end."""
    from interp import plotting  # noqa: F401 — imported by the caller's first figure: not timed here
    from interp.analysis.drawing import DrawingWorker

    job = (f"(__import__('time').sleep(0.05 if __import__('os').getpid() == {os.getpid()} else 0.5), "
           "repr(__import__('os').getpid()).encode())[1]")
    worker = DrawingWorker(helpers=2, caller_draws=True)
    ready: list[bytes] = []
    worker.submit((eval, ("repr(__import__('os').getpid()).encode()",)), ready.append, lambda why: pytest.fail(why))
    assert worker.wait(timeout=60)
    drawn_by: list[int] = []
    for _ in range(10):
        worker.submit((eval, (job,)), lambda png: drawn_by.append(int(png)), lambda why: pytest.fail(why))
    worker.close()
    helpers = [pid for pid in drawn_by if pid not in (os.getpid(), int(ready[0]))]
    assert len(drawn_by) == 10 and len(helpers) == 1  # one helper, one figure
    assert drawing_workers() == []


def test_a_figure_the_caller_draws_while_a_child_stops_is_written_and_not_also_failed() -> None:
    """When a child stops while the caller draws at close, the figures still waiting fail with a message,
    but each figure gets exactly one answer: the one the caller has in hand is written, not also failed."""
    from interp import plotting  # noqa: F401
    from interp.analysis.drawing import DrawingWorker

    me = os.getpid()
    job = f"(__import__('time').sleep(0.1 if __import__('os').getpid() == {me} else 0.3), b'x')[1]"
    stop = f"(__import__('os')._exit(1) if __import__('os').getpid() != {me} else b'k')"
    worker = DrawingWorker(helpers=1, caller_draws=True)
    worker.submit((eval, ("b''",)), lambda png: None, lambda why: pytest.fail(why))
    assert worker.wait(timeout=60)
    answers: list[list[str]] = [[] for _ in range(10)]
    for i in range(10):
        worker.submit((eval, (stop if i in (1, 5) else job,)), lambda png, i=i: answers[i].append("drawn"),
                      lambda why, i=i: answers[i].append("failed"))
    worker.close()
    assert all(len(a) == 1 for a in answers), answers
    assert "failed" in sum(answers, [])  # the child stopped: some figures were not drawn
    assert drawing_workers() == []


def test_the_worker_imports_the_modules_its_figures_need_before_the_first_one() -> None:
    """``prepare``: the child imports them while it waits for work (a module that fails to import is
    passed over); a child started without it has not imported them when its first job comes."""
    from interp.analysis.drawing import DrawingWorker

    probe = "repr('sklearn.manifold' in __import__('sys').modules).encode()"
    seen: dict[str, bytes] = {}
    for label, prepare in (("prepared", ["no_such_module_for_interp", "sklearn.manifold"]), ("plain", [])):
        worker = DrawingWorker(helpers=0, prepare=prepare)
        worker.start()
        worker.submit((eval, (probe,)), lambda png, label=label: seen.__setitem__(label, png),
                      lambda why: pytest.fail(why))
        worker.close()
    assert seen == {"prepared": b"True", "plain": b"False"}
    assert drawing_workers() == []


def test_a_job_marked_ahead_is_drawn_before_those_waiting() -> None:
    """A t-SNE takes seconds: marked :class:`Ahead`, it passes the jobs already waiting in the queue (not
    the one being drawn nor the one in the child's pipe), so it does not run alone at the end of a run."""
    from interp.analysis.drawing import Ahead, DrawingWorker, render_job

    order: list[str] = []
    worker = DrawingWorker(helpers=0)
    worker.start()
    slow = "(__import__('time').sleep(0.5), b'{}')[1]"
    for name in ("first", "second", "third", "fourth"):
        worker.submit((eval, (slow.format(name),)), lambda png: order.append(png.decode()), lambda why: pytest.fail(why))
    worker.submit(Ahead((eval, ("b'ahead'",))), lambda png: order.append(png.decode()), lambda why: pytest.fail(why))
    worker.close()
    assert order.index("ahead") < order.index("third") < order.index("fourth")
    assert sorted(order) == sorted(["first", "second", "third", "fourth", "ahead"])
    assert render_job(Ahead((eval, ("b'here'",)))) == b"here"  # drawn in the training process, the same
    assert drawing_workers() == []
