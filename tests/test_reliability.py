"""Nothing lost on interruption, NaN or a full disk; one line, never a traceback, for hostile input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode
from typer.testing import CliRunner

from conftest import default_sigint, quick_config
from interp.checkpoint import load_checkpoint, save_checkpoint
from interp.cli import app
from interp.train import fit
from interp.train.loop import NAN_CHECK_EVERY

runner = CliRunner()
QUICK = ["--set", "data.train_limit=500", "--set", "train.device=cpu", "--set", "analysis.stages=[confusion]"]


def interp(*args: str, cwd: Path, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "interp", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def one_line(result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]



# -- 1. Ctrl-C and SIGTERM ---------------------------------------------------------------------------
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_during_training_exits_with_the_resume_command(tmp_path: Path, sig: int, code: int) -> None:
    """A slow step hook keeps the process in training; the signal arrives after the first checkpoint."""
    (tmp_path / "slow.py").write_text(
        "import time\nfrom interp.stages import Stage\n"
        "class Slow(Stage):\n    name = 'slow'\n    description = 'sleeps'\n    needs = frozenset()\n"
        "    def run(self, ctx):\n        if ctx.epoch >= 1:\n            open('sleeping', 'w').close()\n"
        "            time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-m", "interp", "train", "--set", "train.epochs=3", *QUICK[:4],
                             "--set", "analysis.stages=['slow:Slow']"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(tmp_path)},
                            preexec_fn=default_sigint)
    last = tmp_path / "save" / "mnist-mlp" / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not (tmp_path / "sleeping").exists() and time.time() < deadline:  # in epoch 1's analysis
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=180)  # generous: the machine may be shared and busy
    assert proc.returncode == code, err
    word = "interrupted" if sig == signal.SIGINT else "stopped (SIGTERM)"
    assert err.strip().splitlines() == [f"{word}; the last finished epoch is saved: continue with interp train "
                                        "--resume save/mnist-mlp"]
    assert load_checkpoint(last)["epoch"] == 0
    assert not list(last.parent.glob(".*.tmp"))


def test_ctrl_c_during_a_checkpoint_write_waits_for_the_file(tmp_path: Path, monkeypatch) -> None:
    """The signal arrives in the middle of torch.save: the file is finished, then the interrupt is raised."""
    path = tmp_path / "last.pt"
    real_save = torch.save

    def save_and_interrupt(obj, handle, *args, **kwargs):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signal.SIGINT)  # delivered while the write is under way
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_and_interrupt)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even in a background job
    try:
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint({"model": {"w": torch.arange(5.0)}, "epoch": 4}, path)
    finally:
        signal.signal(signal.SIGINT, previous)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 4  # whole, not cut
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_interrupt_before_the_first_epoch_says_there_is_nothing_to_resume(tmp_path: Path, monkeypatch) -> None:
    from interp.train import loop

    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "evaluate", interrupted)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", *QUICK])
    line = one_line(result, 130)
    assert line == f"interrupted; no epoch had finished; {Path('save') / 'mnist-mlp'} holds what was written"


# -- 2. best.pt and last.pt ------------------------------------------------------------------------------
def test_best_is_written_before_last_and_repaired_on_resume(tmp_path: Path) -> None:
    run = fit(quick_config("train.epochs=2"), save_dir=tmp_path).run_dir
    last, best = run / "checkpoints" / "last.pt", run / "checkpoints" / "best.pt"
    state = load_checkpoint(last)
    assert state["best"]["epoch"] == load_checkpoint(best)["epoch"]
    # a crash between the writes, in the old order: last.pt says epoch 2 is best, best.pt still holds epoch 1
    if state["best"]["epoch"] != 2:
        pytest.skip("epoch 2 was not the best one in this run")
    old = load_checkpoint(best)
    old["epoch"] = 1
    save_checkpoint(old, best)
    result = runner.invoke(app, ["train", "--resume", str(run), "--set", "train.epochs=3"])
    assert result.exit_code == 0, result.output
    assert f"repaired {best}: it now holds epoch 2" in result.output
    assert load_checkpoint(best)["epoch"] in (2, 3)


# -- 3. resume safety ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("change", "message"), [
    ("train.optimizer=sgd", "--resume: train.optimizer is 'sgd' but the run was trained with 'adam'"),
    ("train.lr=0.1", "--resume: train.lr is 0.1 but the run was trained with 0.001"),
    ("model.hidden=[64]", "--resume: model.hidden is [64] but the run was trained with [128]"),
])
def test_a_refused_resume_changes_nothing(tmp_path: Path, change: str, message: str) -> None:
    run = fit(quick_config("train.epochs=1"), save_dir=tmp_path).run_dir
    before = {p: p.read_bytes() for p in [run / "config.yaml", run / "metrics.jsonl", *run.glob("checkpoints/*")]}
    result = runner.invoke(app, ["train", "--resume", str(run), "--set", change, "--set", "train.epochs=3"])
    assert one_line(result, 2) == f"error: {message}; a resumed run continues the same training (start a new run " \
                                  "to change it)"
    assert {p: p.read_bytes() for p in before} == before
    again = runner.invoke(app, ["train", "--resume", str(run), "--set", "train.epochs=2"])  # still resumable
    assert again.exit_code == 0, again.output


def test_resuming_with_fewer_epochs_writes_nothing(tmp_path: Path) -> None:
    run = fit(quick_config("train.epochs=2"), save_dir=tmp_path).run_dir
    config = (run / "config.yaml").read_bytes()
    result = runner.invoke(app, ["train", "--resume", str(run), "--set", "train.epochs=1"])
    assert result.exit_code == 0 and "already has 2 epochs" in result.output
    assert (run / "config.yaml").read_bytes() == config


def test_two_processes_cannot_train_one_run(tmp_path: Path) -> None:
    from interp.errors import UserError
    from interp.run import Run

    run_dir = fit(quick_config("train.epochs=1"), save_dir=tmp_path).run_dir
    holder = Run.open(run_dir)
    holder.lock()
    try:
        with pytest.raises(UserError, match=r"is in use by interp process \d+; wait for it to finish"):
            fit(quick_config("train.epochs=2"), resume=run_dir)
    finally:
        holder.close()
    rows = fit(quick_config("train.epochs=2"), resume=run_dir).metrics
    assert [r["epoch"] for r in rows] == [0, 1, 2]  # no duplicate rows


def test_stale_temporaries_are_removed_on_resume(tmp_path: Path) -> None:
    run = fit(quick_config("train.epochs=1"), save_dir=tmp_path).run_dir
    stale = run / "checkpoints" / ".last.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    result = runner.invoke(app, ["train", "--resume", str(run), "--set", "train.epochs=2"])
    assert result.exit_code == 0 and f"removed {stale}" in result.output
    assert not stale.exists()


@pytest.mark.parametrize(("damage", "message"), [
    (lambda s: s.update(model=[1, 2]), "'model' is not a dict of tensors"),
    (lambda s: s.update(model=None), "'model' is not a dict of tensors"),
    (lambda s: s.pop("epoch"), "'epoch' is missing"),
    (lambda s: s.update(epoch="abc"), "'epoch' is a str"),
    (lambda s: s.update(rng={"torch": 3}), "'rng' does not hold the random states"),
])
def test_checkpoints_of_the_wrong_structure(tmp_path: Path, damage, message: str) -> None:
    run = fit(quick_config("train.epochs=1"), save_dir=tmp_path).run_dir
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    damage(state)
    torch.save(state, run / "checkpoints" / "last.pt")
    result = runner.invoke(app, ["train", "--resume", str(run), "--set", "train.epochs=2"])
    assert message in one_line(result, 2)


def test_pickled_code_in_a_checkpoint_is_named_as_such(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, ("true",))

    torch.save({"model": {"w": torch.ones(1)}, "x": Payload()}, tmp_path / "evil.pt")
    from interp.errors import UserError

    with pytest.raises(UserError, match=r"holds pickled code \((posix|os)\.system\)"):
        load_checkpoint(tmp_path / "evil.pt")


# -- 4. non-finite loss ----------------------------------------------------------------------------------
def test_nan_loss_stops_with_exit_3_and_keeps_the_last_good_epoch(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--set", "train.optimizer=sgd", "--set", "train.lr=10000",
                                 "--set", "train.epochs=3", *QUICK[:4],
                                 "--set", "analysis.stages=[confusion, weights, embeddings]"])
    line = one_line(result, 3)
    import re

    found = re.match(r"error: the training loss is (nan|inf) at epoch (\d), step (\d+); stopped at step (\d+), before "
                     r"any checkpoint or stage saw it \(checkpoints keep epoch (\d)\)\. Lower train.lr \(now 10000\), "
                     r"or set train.on_nan=skip_batch$", line)
    assert found, line
    epoch, first, stopped, kept = (int(found.group(i)) for i in (2, 3, 4, 5))
    assert kept == epoch - 1
    assert first <= stopped < first + NAN_CHECK_EVERY
    run = tmp_path / "save" / "mnist-mlp"
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["epoch"] == kept and all(torch.isfinite(w).all() for w in last["model"].values())
    assert not (run / f"epoch_{epoch:03d}").exists()  # no stage ran on the broken model
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(epoch))
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"bare {name} in metrics.jsonl"))


class HostReads(TorchFunctionMode):
    """Counts the reads of a tensor's value on the host (each one waits for a GPU) made by interp's code."""

    READS = {"__bool__", "__float__", "__int__", "__index__", "item", "tolist", "cpu", "numpy"}

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        import interp

        self.package = os.path.dirname(interp.__file__) + os.sep  # not a path fragment: a checkout may be "interp"

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        caller = sys._getframe(1).f_code.co_filename
        if getattr(func, "__name__", "") in self.READS and caller.startswith(self.package):
            self.count += 1
        return func(*args, **(kwargs or {}))


def poison_step(monkeypatch, step: int) -> None:  # type: ignore[no-untyped-def]
    """Training logits of the ``step``-th forward pass (from 1) become NaN."""
    from interp.train import loop

    real = loop.logits_of
    calls = {"n": 0}

    def poisoned(output):  # type: ignore[no-untyped-def]
        logits = real(output)
        if logits.requires_grad:
            calls["n"] += 1
            if calls["n"] == step:
                return logits * float("nan")
        return logits

    monkeypatch.setattr(loop, "logits_of", poisoned)


def epoch_parts(on_nan: str):  # type: ignore[no-untyped-def]
    from interp.config import DataConfig
    from interp.data import load_data
    from interp.models import build_model

    data = load_data(DataConfig(dataset="mnist-sample", train_limit=2000))
    torch.manual_seed(0)
    model = build_model(quick_config().model, data.input_shape, 10)
    return dict(model=model, data=data, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
                loss_fn=torch.nn.CrossEntropyLoss(), batch_size=8, generator=torch.Generator().manual_seed(0),
                on_nan=on_nan, epoch=4)


def test_a_clean_epoch_reads_the_device_once_per_check(monkeypatch) -> None:
    """250 steps: no host read per step, one per NAN_CHECK_EVERY steps and a few at the epoch's end."""
    from interp.train.loop import train_epoch

    reads = HostReads()
    with reads:
        loss, accuracy, skipped = train_epoch(**epoch_parts("stop"))
    steps = 2000 // 8
    assert skipped == 0 and loss is not None and 0 < accuracy <= 1
    assert reads.count <= steps // NAN_CHECK_EVERY + 4, reads.count  # 250 reads if it read every step


@pytest.mark.parametrize("bad_step", [1, 7, NAN_CHECK_EVERY, NAN_CHECK_EVERY + 1, 249, 250])
def test_stop_names_the_first_nonfinite_step_and_stops_within_one_check(monkeypatch, bad_step: int) -> None:
    from interp.errors import NonFiniteLoss
    from interp.train.loop import train_epoch

    poison_step(monkeypatch, bad_step)
    steps = []
    with pytest.raises(NonFiniteLoss) as caught:
        train_epoch(**epoch_parts("stop"), on_step=lambda: steps.append(1))
    import re

    found = re.match(r"the training loss is nan at epoch 4, step (\d+); stopped at step (\d+),", str(caught.value))
    assert found, str(caught.value)
    first, stopped = int(found.group(1)), int(found.group(2))
    assert first == bad_step
    assert stopped == min(-(-bad_step // NAN_CHECK_EVERY) * NAN_CHECK_EVERY, 250) == len(steps) + 1


def test_skip_batch_reads_every_loss_and_skips_exactly_the_bad_one(monkeypatch) -> None:
    from interp.train.loop import train_epoch

    poison_step(monkeypatch, 9)
    parts = epoch_parts("skip_batch")
    before = [p.detach().clone() for p in parts["model"].parameters()]
    loss, accuracy, skipped = train_epoch(**parts)
    assert skipped == 1 and loss is not None and accuracy > 0.5
    assert all(torch.isfinite(p).all() and not torch.equal(p, b) for p, b in zip(parts["model"].parameters(), before, strict=True))


def test_skip_batch_leaves_bad_batches_out(tmp_path: Path, monkeypatch) -> None:
    """One poisoned batch: its step is skipped and counted, the rest trains."""
    poison_step(monkeypatch, 2)
    rows = fit(quick_config("train.epochs=1", "train.on_nan=skip_batch"), save_dir=tmp_path).metrics
    assert rows[1]["skipped_batches"] == 1 and rows[1]["eval_accuracy"] > 0.5
    assert json.loads((tmp_path / "mnist-mlp" / "metrics.jsonl").read_text().splitlines()[1])["skipped_batches"] == 1


def test_metrics_are_strict_json() -> None:
    from interp.run import strict_json

    assert json.dumps(strict_json({"a": float("nan"), "b": [float("inf"), 1.5]}), allow_nan=False) == \
        '{"a": null, "b": [null, 1.5]}'


# -- 5. a cut metrics.jsonl ------------------------------------------------------------------------------
def test_a_cut_last_line_is_repaired_on_resume_and_read_by_the_report(tmp_path: Path) -> None:
    from interp.report import build_report

    run = fit(quick_config("train.epochs=2"), save_dir=tmp_path).run_dir
    text = (run / "metrics.jsonl").read_text()
    cut = text[: len(text) - 60]  # what a full disk leaves: the last row half written
    (run / "metrics.jsonl").write_text(cut + '\n[1, 2]\n{"no": "epoch"}\n')
    page = build_report(run).read_text()
    assert "<td>0</td>" in page and "<td>1</td>" in page
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    state["epoch"] = 1  # as if the crash came before the epoch-2 checkpoint
    save_checkpoint(state, run / "checkpoints" / "last.pt")
    rows = fit(quick_config("train.epochs=2"), resume=run).metrics
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert all(line.startswith("{") for line in (run / "metrics.jsonl").read_text().splitlines())


# -- 6. disk faults --------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["file", "dangling"])
def test_save_dir_that_cannot_be_a_folder(tmp_path: Path, where: str, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "save"
    if where == "file":
        target.write_text("a file, not a folder")
    else:
        target.symlink_to(tmp_path / "gone" / "away")
    result = runner.invoke(app, ["train", "--save-dir", "save", *QUICK, "--set", "train.epochs=1"])
    line = one_line(result, 2)
    assert line == ("error: save folder save is a file, not a folder; pick another --save-dir" if where == "file" else
                    f"error: save folder save is a link to {tmp_path / 'gone' / 'away'}, which does not exist"), line


def test_a_disk_that_fills_mid_run_keeps_the_old_checkpoint(tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes a write past the limit fail (EFBIG), as a full disk does: the resumed run's next
    last.pt cannot be written, and the old one is intact."""
    run = fit(quick_config("train.epochs=1"), save_dir=tmp_path).run_dir
    last = run / "checkpoints" / "last.pt"
    limit = last.stat().st_size - 1
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            "from interp.cli import main; sys.argv = ['interp', *sys.argv[1:]]; main()")
    proc = subprocess.run([sys.executable, "-c", code, "train", "--resume", str(run), "--set", "train.epochs=2"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert lines[0] in [f"error: {path}: {why} (check the disk's free space and the folder's permissions)"
                        for why in ("the write failed", "File too large") for path in (last.with_name("best.pt"), last)]
    assert load_checkpoint(last)["epoch"] == 1  # the previous checkpoints, whole
    assert load_checkpoint(last.with_name("best.pt"))["epoch"] == 1
    assert not list(last.parent.glob(".*.tmp"))
    rows = fit(quick_config("train.epochs=2"), resume=run).metrics  # and it resumes once there is room
    assert [r["epoch"] for r in rows] == [0, 1, 2]


# -- 7, 9. hostile values --------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "message"), [
    (["--set", "seed=9223372036854775808"], "seed: Input should be less than 9223372036854775808"),
    (["--set", "train.device=cuda:abc"], "train.device: expected auto, cpu, cuda, cuda:N or mps"),
    (["--set", "train.device=cpu:7"], "train.device: expected auto, cpu, cuda, cuda:N or mps"),
    (["--set", "name=" + "x" * 300], "name: String should have at most 100 characters"),
    (["--set", "data.points=100000000"], "data.points: Input should be less than or equal to 5000000"),
    (["--set", "model.hidden=[10000000]"], "model.hidden.0: Input should be less than or equal to 65536"),
    (["--set", "model.width=100000"], "model.width: Input should be less than or equal to 4096"),
    (["--set", "data.eval_batch_size=10000000"], "data.eval_batch_size: Input should be less than or equal to 1000000"),
    (["--set", "analysis.probe_per_class=1000"], "analysis.probe_per_class: Input should be less than or equal to 100"),
    (["--set", "analysis.stages=[{weights: {bins: 100000}}]"], "bins: Input should be less than or equal to 1000"),
    (["--set", "analysis.stages=[{integrated_gradients: {steps: 1000000}}]"], "steps: Input should be less than or equal to 2000"),
    (["--set", "analysis.stages=[{trust: {random_rankings: 5000}}]"], "random_rankings: Input should be less than or equal to 100"),
    (["--set", "analysis.stages=[{saliency: {smoothgrad_samples: 100000}}]"], "smoothgrad_samples: Input should be less than or equal to 1000"),
    (["--set", "x=" + "y" * 100_000], "--set x=…: 100,002 characters; at most 10,000"),
    (["--set", "train.lr=1e308"], "train.lr: Input should be less than or equal to 1000000"),
])
def test_hostile_values_are_refused_naming_the_limit(args: list[str], message: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    line = one_line(runner.invoke(app, ["train", *args]), 2)
    assert message in line, line
    assert not (tmp_path / "save").exists()


@pytest.mark.parametrize(("content", "message"), [
    (b"name: \xff\xfe\n", "not UTF-8 text"),
    (b"a: " + b"[" * 1000 + b"]" * 1000, "nested"),  # too deep for the parser, or refused after it
    (b"train: {epochs: 1", "not valid YAML"),
])
def test_hostile_config_files(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "bad.yaml").write_bytes(content)
    assert message in one_line(runner.invoke(app, ["train", "-c", str(tmp_path / "bad.yaml")]), 2)


def test_animate_frames_limit(tmp_path: Path) -> None:
    line = one_line(runner.invoke(app, ["animate", "--frames", "100000", "--save-dir", str(tmp_path)]), 2)
    assert "animate.frames: Input should be less than or equal to 2000" in line


# -- 8. corrupt dataset files ----------------------------------------------------------------------------
@pytest.mark.parametrize(("damage", "message"), [
    ("magic", "train-images-idx3-ubyte: not an MNIST IDX file"),
    ("truncated", "train-images-idx3-ubyte: not an MNIST IDX file"),
    ("labels", "the t10k labels must lie in 0–9 (found 200…200)"),
    ("count", "the train images ((300, 28, 28)) and labels (299) do not match"),
    ("sizes", "the train images are 28×28, the t10k images 14×14; both must have one size"),
])
def test_corrupt_mnist_files_are_named(tmp_path: Path, damage: str, message: str, monkeypatch) -> None:
    import numpy as np

    from conftest import make_mnist_raw, write_idx

    make_mnist_raw(tmp_path / "data")
    raw = tmp_path / "data" / "MNIST" / "raw"
    if damage == "magic":
        data = bytearray((raw / "train-images-idx3-ubyte").read_bytes())
        data[2] = 0x0D  # a float IDX file, not bytes
        (raw / "train-images-idx3-ubyte").write_bytes(bytes(data))
    elif damage == "truncated":
        data = (raw / "train-images-idx3-ubyte").read_bytes()
        (raw / "train-images-idx3-ubyte").write_bytes(data[: len(data) // 2])
    elif damage == "labels":
        write_idx(raw / "t10k-labels-idx1-ubyte", np.full(100, 200, dtype=np.uint8))
    elif damage == "sizes":
        write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((100, 14, 14), dtype=np.uint8))
    else:
        write_idx(raw / "train-labels-idx1-ubyte", np.zeros(299, dtype=np.uint8))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--set", "data.dataset=mnist", "--set", "data.download=false", *QUICK])
    assert message in one_line(result, 2)
    assert not (tmp_path / "save").exists()  # found before any run folder is made


# -- Ctrl-C in the other commands ---------------------------------------------------------------------
def test_ctrl_c_in_analyze_and_animate(tmp_path: Path, monkeypatch) -> None:
    run = fit(quick_config("train.epochs=1"), save_dir=tmp_path).run_dir
    import interp.analysis.runner as runner_module
    import interp.animate.command as command

    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(runner_module, "order_stages", interrupted)
    assert one_line(runner.invoke(app, ["analyze", str(run)]), 130) == \
        "interrupted; the command stopped before it finished"
    monkeypatch.setattr(command, "_play", interrupted)
    assert one_line(runner.invoke(app, ["animate", "--frames", "2", "--save-dir", str(tmp_path)]), 130) == \
        "interrupted; the command stopped before it finished"


def test_yaml_aliases_are_refused_before_they_expand(tmp_path: Path) -> None:
    bomb = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(9))
    (tmp_path / "bomb.yaml").write_text(bomb)  # 10^10 items once expanded
    started = time.perf_counter()
    line = one_line(runner.invoke(app, ["train", "-c", str(tmp_path / "bomb.yaml")]), 2)
    assert "YAML aliases (*name) are not accepted in a config" in line and time.perf_counter() - started < 5


@pytest.mark.parametrize("arch", ["os:system", "subprocess:run", "builtins:eval"])
def test_python_itself_is_not_a_model_factory(tmp_path: Path, arch: str, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--set", f"model.arch='{arch}'",
                                 "--set", f"model.args={{command: 'touch {tmp_path}/PWNED'}}"])
    assert "is part of Python itself" in one_line(result, 2)
    assert not (tmp_path / "PWNED").exists()


def test_resuming_after_epoch_0_does_not_repeat_it(tmp_path: Path) -> None:
    run = fit(quick_config("train.epochs=0"), save_dir=tmp_path).run_dir  # as if stopped during epoch 1
    rows = fit(quick_config("train.epochs=1"), resume=run).metrics
    assert [r["epoch"] for r in rows] == [0, 1]
