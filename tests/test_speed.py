"""The fast-path options on the CPU: bf16 autocast, channels_last, crop-and-flip augmentation on the device."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import quick_config
from interp.checkpoint import load_checkpoint
from interp.cli import app
from interp.train import fit
from interp.train.speed import crop_flip


def test_crop_flip_is_a_shifted_crop_and_a_mirror_per_image() -> None:
    images = torch.randint(0, 256, (16, 3, 8, 10), dtype=torch.uint8)
    out = crop_flip(images, torch.Generator().manual_seed(5), pad=2)
    g = torch.Generator().manual_seed(5)  # the same draws, checked one image at a time
    offsets = torch.randint(0, 5, (16, 2), generator=g)
    flips = torch.rand(16, generator=g) < 0.5
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(16):
        r, c = offsets[i].tolist()
        expected = padded[i, :, r:r + 8, c:c + 10]
        assert torch.equal(out[i], expected.flip(-1) if flips[i] else expected)
    assert out.dtype == torch.uint8 and 0 < int(flips.sum()) < 16


def test_bf16_and_channels_last_train_on_the_cpu(tmp_path: Path) -> None:
    base = ["model.arch=allconv", "model.width=8", "train.epochs=1", "data.train_limit=1500"]
    fp32 = fit(quick_config(*base), save_dir=tmp_path / "fp32").metrics
    fast = fit(quick_config(*base, "train.precision=bf16", "train.channels_last=true"), save_dir=tmp_path / "bf16")
    rows = fast.metrics
    assert rows[-1]["train_loss"] is not None and abs(rows[-1]["eval_accuracy"] - fp32[-1]["eval_accuracy"]) < 0.1
    weights = load_checkpoint(fast.run_dir / "checkpoints" / "last.pt")["model"]
    conv = next(v for k, v in weights.items() if v.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and conv.dtype == torch.float32


def test_compiled_training_learns_what_eager_training_learns(tmp_path: Path) -> None:
    """train.compile wraps the model in torch.compile (a module without len(), once mistaken for a missing
    one); the compiled steps compute what the eager ones do, to float rounding."""
    eager = fit(quick_config("train.epochs=1"), save_dir=tmp_path / "eager")
    compiled = fit(quick_config("train.epochs=1", "train.compile=true"), save_dir=tmp_path / "compiled")
    a, b = (load_checkpoint(r.run_dir / "checkpoints" / "last.pt")["model"] for r in (eager, compiled))
    assert a.keys() == b.keys()  # the plain module's names, not the compiled wrapper's (_orig_mod.…)
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    assert compiled.metrics[-1]["eval_accuracy"] == pytest.approx(eager.metrics[-1]["eval_accuracy"], abs=0.01)


def test_augmented_training_resumes_bit_exactly(tmp_path: Path) -> None:
    args = ("model.arch=allconv", "model.width=4", "data.augment=crop_flip", "data.train_limit=600")
    straight = fit(quick_config(*args, "train.epochs=2"), save_dir=tmp_path / "a").run_dir
    half = fit(quick_config(*args, "train.epochs=1"), save_dir=tmp_path / "b").run_dir
    fit(quick_config(*args, "train.epochs=2"), resume=half)
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt")["model"] for r in (straight, half))
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain = fit(quick_config(*args[:2], args[3], "train.epochs=2"), save_dir=tmp_path / "c").run_dir
    c = load_checkpoint(plain / "checkpoints" / "last.pt")["model"]
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the augmentation did change what was learned


def test_fp16_on_the_cpu_is_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["train", "--set", "train.precision=fp16", "--set", "train.device=cpu"])
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: train.precision fp16 needs a CUDA device; use bf16 on the CPU"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fp16_on_cuda(tmp_path: Path) -> None:
    rows = fit(quick_config("train.device=cuda", "train.precision=fp16", "model.arch=allconv", "model.width=8"),
               save_dir=tmp_path).metrics
    assert rows[-1]["eval_accuracy"] > 0.5
