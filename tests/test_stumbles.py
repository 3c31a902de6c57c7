"""Hostile inputs and a new user's stumbles, round three: each finding, with the behaviour it should have."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import quick_config
from interp.checkpoint import load_checkpoint, save_checkpoint
from interp.cli import app
from interp.train import fit

runner = CliRunner()


def one_line(result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return fit(quick_config("train.epochs=1", "data.train_limit=300"), save_dir=tmp_path_factory.mktemp("run")).run_dir


def test_a_checkpoint_whose_epoch_is_not_a_number_is_named(run: Path, tmp_path: Path) -> None:
    state = load_checkpoint(run / "checkpoints" / "best.pt")
    forged = tmp_path / "odd.pt"
    save_checkpoint({**state, "epoch": "two"}, forged)
    line = one_line(runner.invoke(app, ["analyze", str(run), "--checkpoint", str(forged)]), 2)
    assert line == f"error: checkpoint {forged}: its epoch is 'two', not a whole number of epochs"


def test_an_analysis_label_is_a_plain_folder_inside_analysis(run: Path, tmp_path: Path) -> None:
    dots = tmp_path / "...pt"  # its stem is ".."
    shutil.copy(run / "checkpoints" / "best.pt", dots)
    before = sorted(p.name for p in run.iterdir())
    line = one_line(runner.invoke(app, ["analyze", str(run), "--checkpoint", str(dots)]), 2)
    assert line.startswith(f"error: --checkpoint {dots}: its name '..' cannot name a folder under {run / 'analysis'}")
    assert sorted(p.name for p in run.iterdir()) == before  # nothing landed in the run folder itself


def test_analyze_says_an_animation_run_holds_no_model(tmp_path: Path) -> None:
    folder = tmp_path / "rings"
    (folder / "animations").mkdir(parents=True)
    (folder / "config.yaml").write_text("seed: 0\n")
    line = one_line(runner.invoke(app, ["analyze", str(folder)]), 2)
    assert line == f"error: run {folder} holds an animation (interp animate), not a trained model: there is no " \
                   "checkpoint to analyze"


def test_a_tilde_is_the_home_folder_in_every_path(run: Path, tmp_path: Path, monkeypatch) -> None:
    from interp.config import load_config

    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_config(None, ["data.root=~/photos"]).data.root == str(tmp_path / "photos")
    shutil.copytree(run, tmp_path / "saved")
    done = runner.invoke(app, ["report", "~/saved"])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "saved" / "report" / "index.html").is_file()
    shutil.copy(run / "checkpoints" / "last.pt", tmp_path / "weights.pt")
    done = runner.invoke(app, ["analyze", "~/saved", "--checkpoint", "~/weights.pt", "--stage", "confusion"])
    assert done.exit_code == 0, done.output
    assert json.loads((tmp_path / "saved" / "analysis" / "weights" / "metrics.json").read_text())["epoch"] == 1


def test_the_report_keeps_a_summarys_notes_whole(tmp_path: Path) -> None:
    from interp.report import build_report

    run = fit(quick_config("train.epochs=1", "data.train_limit=300",
                           "analysis.stages=[saliency, {trust: {images: 4, steps: 4}}]"), save_dir=tmp_path).run_dir
    notes = json.loads((run / "epoch_001" / "trust" / "summary.json").read_text())["notes"]
    assert max(map(len, notes)) > 200
    from html import unescape

    page = unescape(build_report(run).read_text(encoding="utf-8"))
    for note in notes:
        assert note in page


def test_a_dataset_whose_splits_differ_in_shape_is_one_line(tmp_path: Path, monkeypatch) -> None:
    """A factory whose training and evaluation images differ in size is refused before training (as IDX
    files are now, and every other kind by load_data's own check), not by a matrix product."""
    (tmp_path / "twosizes.py").write_text(
        "import torch\n"
        "def make():\n"
        "    train = (torch.zeros(20, 1, 28, 28, dtype=torch.uint8), torch.arange(20) % 2)\n"
        "    test = (torch.zeros(10, 1, 14, 14, dtype=torch.uint8), torch.arange(10) % 2)\n"
        "    return train, test, ['a', 'b']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    line = one_line(runner.invoke(app, ["train", "--set", "data.dataset=twosizes:make", "--set", "train.epochs=1",
                                        "--set", "analysis.stages=[confusion]"]), 2)
    assert line == ("error: data.dataset 'twosizes:make': train images (1, 28, 28) and eval images (1, 14, 14) "
                    "differ in shape")


@pytest.mark.parametrize(("content", "message"), [
    (b"train:\n  epochs: 3\n  lr: 0.1\n  epochs: 5\n", "key 'epochs' appears twice in one mapping (line 4); keep one"),
    (b"train:\n  epochs: true\n", "train.epochs: expected a value of its own kind, not yes/no (true/false) (got True)"),
    (b"train:\n  lr: false\n", "train.lr: expected a value of its own kind, not yes/no (true/false) (got False)"),
    (b"name: ..\n", "name: a run folder name: letters, digits, '.', '_' and '-', not starting with '.' (got '..')"),
    (b"name: .\n", "name: a run folder name: letters, digits, '.', '_' and '-', not starting with '.' (got '.')"),
])
def test_configs_that_would_be_read_other_than_meant_are_refused(tmp_path: Path, content: bytes, message: str) -> None:
    (tmp_path / "bad.yaml").write_bytes(content)
    line = one_line(runner.invoke(app, ["train", "-c", str(tmp_path / "bad.yaml")]), 2)
    assert line == f"error: {tmp_path / 'bad.yaml'}: {message}"


def test_a_run_name_that_is_not_a_plain_folder_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    line = one_line(runner.invoke(app, ["train", "--name", "..", "--set", "analysis.stages=[confusion]"]), 2)
    assert line == "error: run name '..': use letters, digits, '.', '_' and '-' only, not starting with '.'"
    assert not (tmp_path / "save").exists() or not any((tmp_path / "save").iterdir())


def test_paths_that_exist_but_are_not_what_was_asked_for_say_what_they_are(run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()
    line = one_line(runner.invoke(app, ["train", "-c", str(folder)]), 2)
    assert line == f"error: config file {folder} is a folder, not a config file"
    line = one_line(runner.invoke(app, ["train", "-c", "/dev/null"]), 2)
    assert line == "error: config file /dev/null is not a regular file (a pipe or a device); give a YAML file"
    line = one_line(runner.invoke(app, ["train", "--resume", str(run / "config.yaml")]), 2)
    assert line == f"error: run {run / 'config.yaml'} is a file, not a run folder"


def test_animate_frames_of_0_is_one_line_like_every_other_value(tmp_path: Path) -> None:
    line = one_line(runner.invoke(app, ["animate", "--frames", "0", "--save-dir", str(tmp_path)]), 2)
    assert line.startswith("error: ") and line.endswith("animate.frames: Input should be greater than or equal to 1 "
                                                        "(got 0)")


def test_resuming_a_finished_run_names_its_best_epoch(run: Path) -> None:
    done = runner.invoke(app, ["train", "--resume", str(run)])
    assert done.exit_code == 0, done.output
    assert f"run saved in {run} (best epoch 1)" in " ".join(done.output.split())


def test_the_completeness_error_is_the_median_of_the_images(tmp_path: Path) -> None:
    """With an even number of probe images the median is the mean of the middle two (torch's is the lower)."""
    import numpy as np

    import interp

    run = fit(quick_config("train.epochs=1", "data.train_limit=300",
                           "analysis.stages=[{integrated_gradients: {steps: 8, baselines: [black]}}]"),
              save_dir=tmp_path).run_dir
    record = interp.load_record(run, "integrated_gradients", 1)
    relative = record.figures["integrated_gradients"]["fields"]["relative"]["black"]
    assert len(relative) == 10
    assert record.numbers["integrated_gradients/completeness_error"] == pytest.approx(float(np.median(relative)),
                                                                                      rel=1e-6)
    assert float(np.median(relative)) != pytest.approx(float(np.sort(relative)[4]), rel=1e-6)  # not the lower one


def test_one_option_of_one_stage_from_the_command_line(tmp_path: Path, monkeypatch) -> None:
    import yaml

    monkeypatch.chdir(tmp_path)
    done = runner.invoke(app, ["train", "--set", "train.epochs=1", "--set", "data.train_limit=200", "--set",
                               "analysis.stages=[confusion, {trust: {steps: 4}}, saliency]", "--set",
                               "analysis.stages.trust.images=12", "--set", "analysis.stages.saliency.smoothgrad=false"])
    assert done.exit_code == 0, done.output
    saved = yaml.safe_load((tmp_path / "save" / "mnist-mlp" / "config.yaml").read_text())
    assert saved["analysis"]["stages"] == ["confusion", {"trust": {"steps": 4, "images": 12}},
                                           {"saliency": {"smoothgrad": False}}]
    trust = json.loads((tmp_path / "save" / "mnist-mlp" / "epoch_001" / "trust" / "trust.json").read_text())
    assert trust["images"] == 12
    line = one_line(runner.invoke(app, ["train", "--set", "analysis.stages.nosuch.x=1"]), 2)
    assert line.startswith("error: --set analysis.stages.nosuch.x: nosuch is not among this run's stages (confusion,")
    line = one_line(runner.invoke(app, ["train", "--set", "analysis.stages.trust.imagez=1"]), 2)
    assert line.endswith("(trust): imagez: unknown option")


def test_a_checkpoint_that_cannot_be_written_names_the_checkpoint_or_its_folder(tmp_path: Path, monkeypatch) -> None:
    """A read-only folder (the temporary file cannot be made) names the folder; a rename that fails names the
    checkpoint and leaves no temporary file behind, even when removing it fails too."""
    import errno
    import os
    import tempfile

    import torch

    target = tmp_path / "checkpoints" / "last.pt"

    def read_only(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(target.parent / ".last.pt.x1y2.tmp"))

    with monkeypatch.context() as patch:
        patch.setattr(tempfile, "mkstemp", read_only)
        with pytest.raises(OSError) as raised:
            save_checkpoint({"model": {"w": torch.zeros(2)}, "epoch": 1}, target)
    assert raised.value.filename == str(target.parent) and ".tmp" not in str(raised.value)
    assert "cannot write last.pt there" in raised.value.strerror

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", args[0])

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", refuse)
        with pytest.raises(OSError) as raised:
            save_checkpoint({"model": {"w": torch.zeros(2)}, "epoch": 1}, target)
    assert raised.value.filename == str(target)
    assert list(target.parent.iterdir()) == []  # the temporary file is gone


def test_a_projector_config_that_does_not_parse_is_named_and_left_whole(tmp_path: Path) -> None:
    stages = "analysis.stages=[confusion, {embeddings: {points: 60, tsne: never}}]"
    run = fit(quick_config("train.epochs=1", "data.train_limit=300", stages), save_dir=tmp_path).run_dir
    broken = b'embeddings {\n  tensor_name: "mine, by hand"\n  tensor_path: "elsewhere/tensors.tsv"\n}\n{{ not protobuf\n'
    (run / "projector_config.pbtxt").write_bytes(broken)
    done = runner.invoke(app, ["train", "--resume", str(run), "--set", "train.epochs=2"])
    assert done.exit_code == 0, done.output
    said = " ".join(done.output.split())
    assert said.count("projector_config.pbtxt does not parse (ParseError") == 1  # once, naming the file
    assert "failed" not in said
    assert (run / "projector_config.pbtxt").read_bytes() == broken  # entries it did not write are kept
    assert (run / "epoch_002" / "confusion" / "confusion.png").is_file()  # the other stages' output too
    assert (run / "00002" / "embeddings" / "tensors.tsv").is_file()


def test_an_ignored_sigint_stays_ignored_while_a_checkpoint_is_written(tmp_path: Path) -> None:
    """A background job of a non-interactive shell ignores SIGINT; interp must not start answering it with
    130 just because it landed while a checkpoint was being written."""
    import signal

    import torch

    from interp.interrupts import deferred_signals

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with deferred_signals():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
            save_checkpoint({"model": {"w": torch.zeros(1)}, "epoch": 1}, tmp_path / "last.pt")
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # no KeyboardInterrupt was raised either
    finally:
        signal.signal(signal.SIGINT, previous)
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


def test_the_same_config_gives_the_same_weights_run_after_run_under_load(tmp_path: Path) -> None:
    """Three runs of one config with every default stage (the drawing worker, the analysis between epochs)
    while another process keeps a core busy: the same weights, bit for bit, and the same losses."""
    import subprocess
    import sys

    import torch

    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        states, losses = [], []
        for i in range(3):
            done = runner.invoke(app, ["train", "--set", "train.epochs=2", "--set", "data.train_limit=1000",
                                       "--set", "analysis.stages.trust.images=10", "--save-dir", str(tmp_path),
                                       "--name", f"run{i}"])
            assert done.exit_code == 0, done.output
            states.append(load_checkpoint(tmp_path / f"run{i}" / "checkpoints" / "last.pt")["model"])
            rows = (tmp_path / f"run{i}" / "metrics.jsonl").read_text().splitlines()
            losses.append([json.loads(row).get("train_loss") for row in rows])
    finally:
        hog.kill()
        hog.wait()
    for other in states[1:]:
        assert all(torch.equal(states[0][k], other[k]) for k in states[0])
    assert losses[0] == losses[1] == losses[2]


def test_a_stage_of_ones_own_is_not_a_default_stage_once_imported(tmp_path: Path, monkeypatch) -> None:
    """A config that named ``module:Class`` registers it; a later run with the default stages must not run it."""
    from interp.stages import STAGES, default_stage_specs, stage_class

    (tmp_path / "mystage.py").write_text(
        "from interp.stages import Stage\n"
        "class Loud(Stage):\n    name = 'loud'\n    description = 'x'\n    needs = frozenset()\n"
        "    def run(self, ctx):\n        raise KeyboardInterrupt\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = default_stage_specs()
    try:
        assert stage_class("mystage:Loud").name == "loud" and "loud" in STAGES
        assert default_stage_specs() == before and "loud" not in before
    finally:
        STAGES.pop("loud", None)
