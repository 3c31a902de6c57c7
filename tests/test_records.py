"""Records and views: every figure can be drawn again from its record, the same bytes in any process, on one
colour scale per figure kind for the whole run; a record from elsewhere is data, never code."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import interp
from conftest import default_sigint, quick_config
from interp.analysis.records import RecordError, draw, encode_record, read_record
from interp.analysis.views import run_scales
from interp.train import fit

STAGES = ("analysis.stages=[confusion, {saliency: {smoothgrad_samples: 2}}, {integrated_gradients: {steps: 8}}, "
          "weights, neurons, activations]")
SCALED = {"saliency/saliency", "integrated_gradients/integrated_gradients", "neurons/neurons",
          "activations/activations"}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    cfg = quick_config("train.epochs=3", "data.train_limit=300", STAGES)
    return fit(cfg, save_dir=tmp_path_factory.mktemp("records")).run_dir


def pngs(run: Path) -> dict[str, bytes]:
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.glob("epoch_*/*/*.png"))}


def test_a_record_round_trips_through_load_record(run: Path) -> None:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for epoch in range(4):
        record = interp.load_record(run, "saliency", epoch)
        assert record.stage == "saliency" and record.epoch == epoch and record.schema == 1
        fields = record.figures["saliency"]["fields"]
        assert fields["pixels"].shape == (10, 1, 28, 28) and len(fields["titles"]) == 10
        assert fields["arrays"]["saliency"].shape == (10, 28, 28) and fields["epoch"] == epoch
        # the numbers beside the figure are the run's own
        assert record.numbers["saliency/mean_abs_gradient"] == rows[epoch]["saliency/mean_abs_gradient"]
        assert record.numbers["saliency/mean_abs_gradient"] == pytest.approx(float(fields["arrays"]["saliency"].mean()),
                                                                            rel=1e-5)
        # written again, a record gives the same bytes
        path = run / f"epoch_{epoch:03d}" / "saliency" / "record.npz"
        assert encode_record(read_record(path)) == path.read_bytes()
    confusion = interp.load_record(run, "confusion", 3)
    matrix = confusion.figures["confusion"]["fields"]["matrix"]
    assert np.trace(matrix) / matrix.sum() == pytest.approx(rows[3]["confusion/accuracy"])


def test_every_epoch_of_a_figure_kind_is_drawn_on_the_runs_scale(run: Path) -> None:
    scales, epochs = run_scales(run)
    assert epochs == [0, 1, 2, 3] and {f"{s}/{f}" for s, f in scales} == SCALED
    for (stage, name), scale in scales.items():
        own = [interp.load_record(run, stage, e).figures[name]["scale"] for e in epochs]
        assert scale == {k: max(o[k] for o in own) for k in scale}  # the largest limit of every epoch
        assert any(o != scale for o in own)  # the epochs' own scales differ: one scale is not a given
        for epoch in epochs:
            record = interp.load_record(run, stage, epoch)
            png = (run / f"epoch_{epoch:03d}" / stage / f"{name}.png").read_bytes()
            assert png == draw(record, name, scale, "one scale for epochs 0–3")  # the file: the run's scale
    # the numbers under the neurons' colour bar are that scale at every epoch
    limit = scales[("neurons", "neurons")]["weight"]
    assert limit == pytest.approx(max(float(np.abs(interp.load_record(run, "neurons", e)
                                                   .figures["neurons"]["fields"]["tiles"]).max()) for e in epochs))


def test_a_view_draws_the_same_bytes_in_another_process(run: Path) -> None:
    path = run / "epoch_002" / "activations" / "record.npz"
    here = {name: draw(read_record(path), name) for name in ("activations",)}
    code = ("import sys; from interp import stages; from interp.analysis.records import draw, read_record; "
            "sys.stdout.buffer.write(draw(read_record(sys.argv[1]), 'activations'))")
    there = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=120, check=True)
    assert there.stdout == here["activations"]
    confusion = run / "epoch_002" / "confusion"
    assert (confusion / "confusion.png").read_bytes() == draw(read_record(confusion / "record.npz"), "confusion")


def forged(tmp_path: Path, kind: str) -> Path:
    """A record.npz made to harm or to exhaust the reader."""
    path = tmp_path / "epoch_001" / "saliency" / "record.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"schema": 1, "stage": "saliency", "epoch": 1, "numbers": {}, "summary": None, "data": {},
            "figures": {"saliency": {"view": "interp.stages.saliency:draw_saliency", "scale": None,
                                     "fields": {"pixels": {"$array": "x"}}}}}
    if kind == "view":  # a view name that is not a registered view
        meta["figures"]["saliency"] = {"view": "os:system", "scale": None, "fields": {"command": "touch pwned"}}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("record.json", json.dumps(meta))
        if kind == "pickle":  # an object array: np.load would unpickle it (and run its code)
            payload = io.BytesIO()
            np.lib.format.write_array(payload, np.array([print, os.system], dtype=object), allow_pickle=True)
            archive.writestr("x.npy", payload.getvalue())
        elif kind == "huge":  # a header promising 4 TB
            header = io.BytesIO()
            np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                          "shape": (1_000_000, 1_000_000)})
            archive.writestr("x.npy", header.getvalue() + b"\0" * 64)
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) // 2] if kind == "truncated" else data)
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    return path


@pytest.mark.parametrize(("kind", "message"), [
    ("pickle", "array 'x' of object with 1 dimensions is not allowed"),
    ("huge", "array 'x' of shape (1000000, 1000000) is past the limit"),
    ("truncated", "not a record"),
    ("view", "needs the view 'os:system', which is not registered here"),
])
def test_a_forged_record_is_refused_with_one_line(tmp_path: Path, kind: str, message: str) -> None:
    path = forged(tmp_path, kind)
    with pytest.raises(interp.UserError) as raised:
        record = interp.load_record(tmp_path, "saliency", 1)
        draw(record, "saliency")
    assert message in str(raised.value) and str(path) in str(raised.value)
    assert isinstance(raised.value, RecordError) or kind == "view"
    done = subprocess.run([sys.executable, "-m", "interp", "draw", str(tmp_path)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode in (1, 2) and "Traceback" not in done.stderr and len(lines) == 1, done.stderr
    assert message in lines[0] and not (tmp_path / "pwned").exists()


STOP = """
import os, signal
from interp.stages import Stage

class Stop(Stage):
    name = "stop"
    description = "interrupts the run at the epoch in STOP_AT"
    needs = frozenset()

    def run(self, ctx):
        if ctx.epoch == int(os.environ.get("STOP_AT", "-1")):
            os.kill(os.getpid(), getattr(signal, os.environ["STOP_WITH"]))
"""


def test_interrupted_runs_resume_or_draw_to_every_figure_of_an_uninterrupted_run(tmp_path: Path) -> None:
    """Ctrl-C and kill -9 in the middle of epochs' analyses, then --resume; figures deleted, then interp
    draw --missing, or --resume of a finished run: every epoch ends with every figure, byte for byte an
    uninterrupted run's."""
    (tmp_path / "stop.py").write_text(STOP)
    stages = STAGES.replace("activations]", "activations, 'stop:Stop']")
    args = ["--set", "train.epochs=4", "--set", "data.train_limit=300", "--set", "train.device=cpu",
            "--set", stages]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}

    def train(name: str, *extra: str, stop: tuple[int, str] | None = None) -> subprocess.CompletedProcess[str]:
        here = {**env, **({"STOP_AT": str(stop[0]), "STOP_WITH": stop[1]} if stop else {})}
        return subprocess.run([sys.executable, "-m", "interp", "train", *args, "--name", name, *extra],
                              cwd=tmp_path, env=here, capture_output=True, text=True, timeout=600,
                              preexec_fn=default_sigint)  # the Stop stage's SIGINT acts even in a background job

    whole = train("whole")
    assert whole.returncode == 0, whole.stderr
    expected = pngs(tmp_path / "save" / "whole")
    assert len(expected) == 6 * 5  # six figures at each of epochs 0–4

    for name, stop, code in (("ctrl-c", (2, "SIGINT"), 130), ("killed", (3, "SIGKILL"), -9)):
        cut = train(name, stop=stop)
        assert cut.returncode == code, cut.stderr
        run = tmp_path / "save" / name
        if code == 130:
            assert "from saved records not drawn yet" in cut.stderr or pngs(run).keys() >= {
                k for k in expected if int(k[6:9]) <= stop[0]}
        assert pngs(run) != expected  # something is missing or on another scale
        resumed = subprocess.run([sys.executable, "-m", "interp", "train", "--resume", str(run)], cwd=tmp_path,
                                 env=env, capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr
        assert pngs(run) == expected, name

    run = tmp_path / "save" / "killed"
    for path in [*run.glob("epoch_001/*/*.png"), run / "epoch_004" / "neurons" / "neurons.png"]:
        path.unlink()
    drawn = subprocess.run([sys.executable, "-m", "interp", "draw", str(run), "--missing"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert drawn.returncode == 0, drawn.stderr
    assert pngs(run) == expected
    for path in run.glob("epoch_00[24]/*/*.png"):  # a finished run whose drawing was cut: --resume draws
        path.unlink()
    again = subprocess.run([sys.executable, "-m", "interp", "train", "--resume", str(run)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "already has 4 epochs" in again.stdout + again.stderr, again.stderr
    assert pngs(run) == expected


@pytest.mark.parametrize("limit", [
    450_000,  # the first over it: a figure the worker drew (the collecting thread), or TensorBoard's events
    1_500_000,  # above a checkpoint (1.2 MB): TensorBoard's writer thread
])
def test_a_full_disk_with_every_default_stage_is_one_line(tmp_path: Path, limit: int) -> None:
    """RLIMIT_FSIZE makes a write past the limit fail (EFBIG) as a full disk does, in whichever thread or
    process writes first (a record, a figure, TensorBoard's events): exit 2, one line naming the file."""
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            "from interp.cli import main; sys.argv = ['interp', *sys.argv[1:]]; main()")
    proc = subprocess.run([sys.executable, "-c", code, "train", "--set", "train.epochs=2", "--set",
                           "data.train_limit=300", "--set", "train.device=cpu"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    named = re.fullmatch(r"error: save/mnist-mlp/(\S+): File too large \(check the disk's free space and the "
                         r"folder's permissions\)", lines[0])
    assert named, lines[0]
    assert named.group(1).startswith(("events.out.tfevents.", "epoch_")), lines[0]  # the file, not a temporary
    run = tmp_path / "save" / "mnist-mlp"
    for record in run.glob("epoch_*/*/record.npz"):  # what was written is whole
        read_record(record)
