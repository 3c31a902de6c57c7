"""The learning-rate schedule: torch's own schedulers as the reference, and a bit-exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import quick_config
from interp.checkpoint import load_checkpoint
from interp.train import fit
from interp.train.schedule import lr_schedule


@pytest.mark.parametrize(("total", "warmup"), [(50, 0), (50, 7), (13, 1), (4, 10)])
def test_cosine_matches_torchs_warmup_and_cosine_schedulers(total: int, warmup: int) -> None:
    rate = lr_schedule("cosine", 0.1, total, warmup)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    w = max(0, min(warmup, total - 1))
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - w, eta_min=0.0)
    if w:
        linear = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / w, end_factor=1.0,
                                                   total_iters=max(1, w - 1))
        scheduler: torch.optim.lr_scheduler.LRScheduler = torch.optim.lr_scheduler.SequentialLR(
            optimizer, [linear, cosine], milestones=[w])
    else:
        scheduler = cosine
    expected = []
    for _ in range(total):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert [rate(step) for step in range(total)] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert lr_schedule("constant", 0.1, total)(total - 1) == 0.1


STOP = ("from interp.stages import Stage\n"
        "class Stop(Stage):\n    name = 'stop'\n    description = 'Ctrl-C in epoch 2 (trained, not saved)'\n"
        "    needs = frozenset()\n"
        "    def run(self, ctx):\n        if ctx.epoch == 2:\n            raise KeyboardInterrupt\n")


def test_a_run_with_a_schedule_resumes_bit_exactly(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "stop_at_2.py").write_text(STOP)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ("train.epochs=3", "train.optimizer=sgd", "train.lr=0.05", "train.nesterov=true", "train.schedule=cosine",
            "train.warmup_epochs=0.5", "data.train_limit=600", "data.batch_size=50")
    straight = fit(quick_config(*args), save_dir=tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        fit(quick_config(*args, "analysis.stages=['stop_at_2:Stop']"), save_dir=tmp_path / "b")
    run = tmp_path / "b" / "mnist-mlp"
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1
    fit(quick_config(*args), resume=run)
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (straight.run_dir, run))
    assert b["epoch"] == 3 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # the last step's rate is the cosine's, near zero; the first epoch's warm-up started at lr / 6 steps
    assert a["optimizer"]["param_groups"][0]["lr"] == pytest.approx(lr_schedule("cosine", 0.05, 36, 6)(35))
    constant = fit(quick_config(*[a for a in args if "schedule" not in a]), save_dir=tmp_path / "c").run_dir
    c = load_checkpoint(constant / "checkpoints" / "last.pt")["model"]
    assert not all(torch.equal(a["model"][k], c[k]) for k in c)  # the schedule did change the training
