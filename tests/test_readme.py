"""The README's snippets for your own model and your own Lightning loop, run as they are written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def block(marker: str, language: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(rf"<!-- tested: tests/test_readme.py {re.escape(marker)} -->\n```{language}\n(.*?)```", text,
                      re.S)
    assert match, f"README block '{marker}' is missing"
    return match.group(1)


def test_own_model_from_yaml(tmp_path: Path) -> None:
    (tmp_path / "mymodels.py").write_text(block("writes this file", "python"))
    (tmp_path / "mine.yaml").write_text(block("runs this config with the mymodels.py below", "yaml"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "interp", "train", "-c", "mine.yaml", "--set", "train.epochs=1",
                           "--set", "data.train_limit=300", "--set", "analysis.stages=[confusion, gradcam, embeddings]"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = next((tmp_path / "save").iterdir())
    assert "arch: mymodels:build" in (run / "config.yaml").read_text()
    assert (run / "epoch_001" / "gradcam" / "gradcam.png").is_file()
    tensors = next((run / "00001").rglob("tensors.tsv")).read_text().splitlines()
    assert len(tensors[0].split("\t")) == 32  # args: {width: 32} reached the factory


def test_lightning_snippet(tmp_path: Path) -> None:
    pytest.importorskip("lightning", reason="the Lightning snippet needs the lightning extra")
    proc = subprocess.run([sys.executable, "-c", block("runs this block", "python")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "save" / "lit"
    assert sorted(p.name for p in run.glob("epoch_*")) == ["epoch_000", "epoch_001", "epoch_002"]
    assert (run / "epoch_002" / "gradcam" / "gradcam.png").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["eval_accuracy"] > 0.5  # the snippet's classes are learnable


def test_units_snippet(tmp_path: Path) -> None:
    """Exemplars read back from the run, and visualisations of the trained model's units and classes."""
    code = block("runs the units block", "python") + (
        "\nassert images.shape == (2, 1, 28, 28) and classes.shape == (10, 1, 28, 28)"
        "\nwith torch.no_grad():"
        "\n    print('right', int((model(classes).argmax(1) == torch.arange(10)).sum()))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = [line.split() for line in proc.stdout.splitlines() if line[:1].isdigit()]
    assert len(printed) == 4  # four units of features.fc1, each with its first exemplars
    assert int(proc.stdout.split("right")[-1]) >= 9  # the model sees each class image as its class
