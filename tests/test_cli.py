from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from interp.cli import app

ROOT = Path(__file__).parent.parent
runner = CliRunner()


def test_train_prints_epoch_lines_and_writes_a_run(tmp_path: Path) -> None:
    collector = (gc.get_threshold(), gc.get_freeze_count())
    result = runner.invoke(app, ["train", "--save-dir", str(tmp_path), "--set", "train.epochs=1",
                                 "--set", "data.train_limit=500", "--set", "analysis.stages=[confusion]"])
    assert result.exit_code == 0, result.output
    assert "epoch 0/1" in result.output and "epoch 1/1 · train loss" in result.output
    assert "eval acc" in result.output and (tmp_path / "mnist-mlp" / "checkpoints" / "best.pt").is_file()
    # run from Python, in the caller's process: its cycle collector is left as it was (the `interp`
    # command tunes it in its own process only)
    assert (gc.get_threshold(), gc.get_freeze_count()) == collector


def test_the_trust_table_prints_whole_numbers_in_a_pipe(tmp_path: Path) -> None:
    """The summary table at its natural width, wider than the 80 columns of a pipe: every number whole
    (not cut to "0.2…") and equal, to its 3 decimals, to summary.json's."""
    import json

    done = subprocess.run([sys.executable, "-m", "interp", "train", "--save-dir", str(tmp_path), "--set",
                           "train.epochs=1", "--set", "data.train_limit=300",
                           "--set", "analysis.stages=[saliency, {trust: {images: 12, resamples: 100}}]"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "…" not in done.stdout
    summary = json.loads((tmp_path / "mnist-mlp" / "epoch_001" / "trust" / "summary.json").read_text())
    lines = done.stdout.splitlines()
    for row in summary["rows"]:
        printed = next(line.split() for line in lines if line.split()[:1] == [row[0]])
        assert printed == [f"{v:.3f}" if isinstance(v, float) else ("—" if v is None else str(v)) for v in row]
    table = [line for line in lines if line.split()[:1] in ([row[0]] for row in summary["rows"])]
    assert max(map(len, table)) > 80  # wider than the pipe, and whole


def test_the_interp_command_tunes_the_collector_in_its_own_process(tmp_path: Path) -> None:
    script = ("import gc, sys\n"
              "from interp.cli import main\n"
              "try:\n"
              f"    main(['train', '--save-dir', {str(tmp_path)!r}, '--set', 'train.epochs=1', "
              "'--set', 'data.train_limit=300', '--set', 'analysis.stages=[confusion]'])\n"
              "except SystemExit as exit:\n"
              "    assert exit.code in (0, None), exit.code\n"
              "print(gc.get_threshold()[0], gc.get_freeze_count() > 10_000)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["10000", "True"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--set", "model.hiden=[3]"], "error: default config with --set: model.hiden: unknown key"),
        (["train", "-c", "nope.yaml"], "error: config file nope.yaml not found"),
        (["train", "--resume", "save/does-not-exist"], "error: run save/does-not-exist does not exist"),
        (["train", "--set", "train.device=cuda:7"], "error: train.device is 'cuda:7'"),
        (["analyze", "save/does-not-exist"], "error: run save/does-not-exist does not exist"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(args: list[str], message: str, tmp_path: Path, monkeypatch) -> None:
    if "cuda:7" in args[-1] and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, [*args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.output
    assert "Traceback" not in result.output


def test_console_script_error_has_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: -1\n")
    proc = subprocess.run([sys.executable, "-m", "interp", "train", "-c", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {bad}: train.epochs: Input should be greater than or equal to 0 (got -1)"
    assert proc.stdout == ""


def test_runner_passes_arguments_through(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "runner.py"), "--save-dir", str(tmp_path), "--name", "r",
                           "--set", "train.epochs=0", "--set", "analysis.stages=[confusion]"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "epoch 0/0" in proc.stdout
    assert (tmp_path / "r" / "epoch_000" / "confusion" / "confusion.png").is_file()


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "analyze", "animate", "report", "stages"):
        assert command in result.output


def test_stages_command_lists_the_registry() -> None:
    from interp.stages import STAGES

    result = runner.invoke(app, ["stages"])
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.output.strip().splitlines()] == list(STAGES)


@pytest.mark.parametrize(("args", "folder"), [
    ([], "mnist-mlp"),
    (["--name", "setdemo"], "setdemo"),
    (["--set", "model.arch=allconv", "--set", "model.width=4"], "mnist-allconv"),
    (["--set", "data.dataset=rings", "--set", "data.points=200"], "rings-mlp"),
])
def test_the_run_is_named_after_its_data_and_model_and_config_yaml_says_so(
        args: list[str], folder: str, tmp_path: Path, monkeypatch) -> None:
    import yaml

    monkeypatch.chdir(tmp_path)
    quick = ["--set", "train.epochs=0", "--set", "train.device=cpu", "--set", "analysis.stages=[]"]
    result = runner.invoke(app, ["train", *quick, *args])
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "save").iterdir()] == [folder]
    assert yaml.safe_load((tmp_path / "save" / folder / "config.yaml").read_text())["name"] == folder
    again = runner.invoke(app, ["train", *quick, *[a for a in args if a not in ("--name", "setdemo")]])
    assert again.exit_code == 0, again.output
    if "setdemo" not in args:  # a second run takes -2, and its config.yaml records that
        saved = yaml.safe_load((tmp_path / "save" / f"{folder}-2" / "config.yaml").read_text())
        assert saved["name"] == f"{folder}-2"
