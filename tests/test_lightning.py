"""The Lightning callback with a real ``lightning.Trainer`` on CPU, and both examples, run as users run them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import quick_config
from interp.train import fit

lightning = pytest.importorskip("lightning", reason="the Lightning callback needs the lightning extra")
ROOT = Path(__file__).parent.parent
STAGES = ["confusion", {"saliency": {"smoothgrad_samples": 2}}, "gradcam"]


def digits(count: int, offset: int) -> TensorDataset:
    from interp.config import DataConfig
    from interp.data import load_data

    data = load_data(DataConfig(dataset="mnist-sample"))
    x = (data.train_x[offset:offset + count].float() / 255 - 0.1307) / 0.3081
    return TensorDataset(x, data.train_y[offset:offset + count])


class Digits(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                                 nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.net(x)

    def training_step(self, batch, _):  # type: ignore[no-untyped-def]
        loss = nn.functional.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, _):  # type: ignore[no-untyped-def]
        self.log("val_loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def files(run: Path) -> dict[str, set[str]]:
    return {d.name: {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}
            for d in sorted(run.glob("epoch_*"))}


@pytest.mark.parametrize("sanity_steps", [0, 2])
def test_callback_in_a_real_trainer_writes_what_interp_train_writes(tmp_path: Path, sanity_steps: int) -> None:
    from interp.lightning import InterpCallback

    torch.manual_seed(0)
    notices: list[str] = []
    callback = InterpCallback(tmp_path / "lit", classes=[str(d) for d in range(10)], stages=STAGES,
                              mean=(0.1307,), std=(0.3081,), notice=notices.append)
    trainer = lightning.Trainer(max_epochs=2, callbacks=[callback], accelerator="cpu", logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                num_sanity_val_steps=sanity_steps)
    module = Digits()
    trainer.fit(module, DataLoader(digits(400, 0), batch_size=50, shuffle=True),
                DataLoader(digits(200, 4000), batch_size=64))
    lit = tmp_path / "lit"
    cli = fit(quick_config("model.arch=allconv", "model.width=4", "analysis.stages=[confusion, "
                           "{saliency: {smoothgrad_samples: 2}}, gradcam]"), save_dir=tmp_path / "save").run_dir
    assert files(lit) == files(cli)  # epoch_000 (before training), epoch_001, epoch_002: the same stage files
    rows = [json.loads(line) for line in (lit / "metrics.jsonl").read_text().splitlines()]
    cli_rows = [json.loads(line) for line in (cli / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2] and [set(r) for r in rows] == [set(r) for r in cli_rows]
    # the numbers are those of the trained module on the whole validation set
    module.eval()
    val = digits(200, 4000).tensors
    with torch.no_grad():
        accuracy = float((module(val[0]).argmax(1) == val[1]).float().mean())
    assert rows[-1]["eval_accuracy"] == pytest.approx(accuracy) == pytest.approx(rows[-1]["confusion/accuracy"])
    assert rows[-1]["train_loss"] is not None


def test_callback_rejects_a_bad_stage_at_once(tmp_path: Path) -> None:
    from interp.errors import UserError
    from interp.lightning import InterpCallback

    with pytest.raises(UserError, match="stages: entry 0: unknown stage 'saliencyy'"):
        InterpCallback(tmp_path / "x", classes=["a"], stages=["saliencyy"])


@pytest.mark.parametrize("example", ["plain_loop.py", "lightning_callback.py"])
def test_examples_run(tmp_path: Path, example: str) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / example), "--images", "128", "--epochs", "1",
                           "--save-dir", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = next(p for p in tmp_path.iterdir() if p.is_dir())
    assert set(files(run)) == {"epoch_000", "epoch_001"}
    assert (run / "epoch_001" / "gradcam" / "gradcam.png").is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["confusion/accuracy"] == pytest.approx(rows[-1]["eval_accuracy"])


def test_callback_under_lightnings_ddp_strategy(tmp_path: Path) -> None:
    """Two CPU processes with strategy="ddp": rank 0 alone writes one run, on the whole validation set."""
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "lightning_callback.py"), "--images", "256",
                           "--epochs", "2", "--devices", "2", "--save-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [p.name for p in tmp_path.iterdir()] == ["lit"]
    rows = [json.loads(line) for line in (tmp_path / "lit" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]  # once per epoch, not once per rank
    confusion = json.loads((tmp_path / "lit" / "epoch_002" / "confusion" / "confusion.json").read_text())
    assert sum(map(sum, confusion["matrix"])) == 64  # the whole validation set (256 // 4), not rank 0's half
