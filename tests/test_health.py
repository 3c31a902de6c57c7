"""Training health: the layers' statistics from the training's own steps, their records, views and diagnoses."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import quick_config
from interp import Analyzer
from interp.analysis.health import Health, diagnose, load_health
from interp.analysis.records import read_record
from interp.config import load_config
from interp.data import load_data
from interp.errors import NonFiniteLoss, UserError
from interp.train import fit

STAGE = ["analysis.stages=[health]", "analysis.drawing_worker=false", "data.train_limit=null"]


def _fit(tmp_path: Path, *overrides: str):  # type: ignore[no-untyped-def]
    with contextlib.redirect_stdout(io.StringIO()):
        return fit(quick_config(*STAGE, *overrides), save_dir=tmp_path)


def _findings(run: Path) -> list[tuple[str, str]]:
    return [(f.rule, f.layer) for f in diagnose(load_health(run))]


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


# -- the known answers ------------------------------------------------------------------------------------


def test_the_default_run_has_no_findings_and_its_records_hold_the_numbers(tmp_path: Path) -> None:
    result = _fit(tmp_path, "train.epochs=3")
    run = result.run_dir
    history = load_health(run)
    assert [e.epoch for e in history] == [1, 2, 3]
    assert _findings(run) == []
    summary = result.summaries["health"]
    assert summary.rows[0][0] == "no findings" and summary.marks == ["good"]
    last = history[-1]
    assert last.modules == ["features.fc1.0", "features.fc1.1", "head"]
    assert last.kinds == ["Linear", "ReLU", "Linear"]
    relu = last.modules.index("features.fc1.1")
    assert 0 <= last.dead[relu] < 0.25  # a few of the 128 units
    # 5,000 digits in batches of 128: 40 steps an epoch, every 50th from the first sampled: the first
    assert len(last.times) == 1 and np.allclose(last.times, 2 + 1 / 40)
    # the numbers in metrics.jsonl and TensorBoard's scalars are the record's
    row = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert row["health/dead/features.fc1.1"] == pytest.approx(last.dead[relu])
    assert row["health/update_ratio/head.weight"] == pytest.approx(np.median(last.update[:, last.params.index("head.weight")]))
    assert row["health/findings"] == 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run)).Reload()
    scalars = events.Scalars("health/dead/features.fc1.1")
    assert [s.step for s in scalars] == [1, 2, 3] and scalars[-1].value == pytest.approx(last.dead[relu])
    # the stage's record keeps what its figures show
    record = read_record(run / "epoch_003" / "health" / "record.npz")
    assert set(record.figures) == {"activity", "steps", "dead"}
    activity = record.figures["activity"]["fields"]
    assert len(activity["times"]) == 3 and activity["panels"][1]["hist"].shape == (3, 40)
    for name in ("activity", "steps", "dead"):
        assert (run / "epoch_003" / "health" / f"{name}.png").stat().st_size > 10_000


def test_a_learning_rate_of_0_05_kills_most_hidden_units_and_says_so(tmp_path: Path) -> None:
    run = _fit(tmp_path, "train.epochs=3", "train.lr=0.05").run_dir
    history = load_health(run)
    relu = history[-1].modules.index("features.fc1.1")
    assert history[-1].dead[relu] > 0.5
    assert ("dead units", "features.fc1.1") in _findings(run)
    summary = read_record(run / "epoch_003" / "health" / "record.npz").summary
    assert summary["rows"][0][:2] == ["dead units", "features.fc1.1"]


def test_eight_sigmoid_layers_show_vanishing_gradients_in_the_first_layers(tmp_path: Path) -> None:
    run = _fit(tmp_path, "train.epochs=2", "model.activation=sigmoid", "model.hidden=[64,64,64,64,64,64,64,64]").run_dir
    vanishing = [layer for rule, layer in _findings(run) if rule == "vanishing gradients"]
    assert vanishing[:2] == ["features.fc1.0.weight", "features.fc2.0.weight"]
    assert "head.weight" not in vanishing and "features.fc8.0.weight" not in vanishing
    last = load_health(run)[-1]
    first, head = last.params.index("features.fc1.0.weight"), last.params.index("head.weight")
    assert np.nanmean(last.grad[:, first]) < 1e-2 * np.nanmean(last.grad[:, head])
    assert all(last.bounded[m] for m, kind in enumerate(last.kinds) if kind == "Sigmoid")


def _eval_train(n_train: int = 2000):  # type: ignore[no-untyped-def]
    data = load_data(load_config(None, ["train.device=cpu"]).data, 0)
    x, y = data.normalize(data.train_x[:n_train]), data.train_y[:n_train]
    return data, x, y, (data.normalize(data.eval_x[:200]), data.eval_y[:200])


def test_sgd_with_a_learning_rate_100x_too_high_for_one_layer_is_an_update_ratio_finding(tmp_path: Path) -> None:
    """Through the Analyzer in a plain loop: one layer's parameter group at 100× the others' rate."""
    data, x, y, eval_data = _eval_train()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    optimizer = torch.optim.SGD([{"params": model[1].parameters()}, {"params": model[3].parameters(), "lr": 1.0},
                                 {"params": model[5].parameters()}], lr=0.01)
    analyzer = Analyzer(tmp_path / "mine", eval_data=eval_data, classes=data.classes, stages=["health"],
                        drawing_worker=False, notice=lambda m: None)
    with analyzer.watch(model, optimizer):
        for epoch in (1, 2):
            for start in range(0, len(x), 50):
                loss = nn.functional.cross_entropy(model(x[start:start + 50]), y[start:start + 50])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            result = analyzer.run(model, epoch)
    analyzer.close()
    assert _hooks(model) == 0
    findings = _findings(analyzer.folder)
    assert ("update ratio high", "3.weight") in findings
    assert not [f for f in findings if f[0].startswith("update ratio") and f[1] != "3.weight"]
    assert result.summaries["health"].rows[0][0] == "update ratio high"
    ratios = load_health(analyzer.folder)[-1]
    high, low = ratios.params.index("3.weight"), ratios.params.index("1.weight")
    assert np.median(ratios.update[:, high]) > 5 * np.median(ratios.update[:, low])


# -- the numbers against a hand computation -----------------------------------------------------------------


def test_one_sampled_step_equals_a_hand_computation() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(inplace=True), nn.Linear(5, 3), nn.Tanh())
    with torch.no_grad():
        model[0].bias[:2] = -100.0  # two units that never fire
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(32, 6)
    with torch.no_grad():
        pre = model[0](x)
        hidden = pre.relu()
        out = model[2](hidden)
        squashed = out.tanh()
    before = [p.detach().clone() for p in model.parameters()]
    health = Health(every=1000, bins=8)
    health.start_epoch()
    with health.watch(model, optimizer):
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters()]
        optimizer.step()
        model(x).sum().backward()  # a second step's forward: not sampled (every=1000)
        optimizer.step()
    epoch = health.end_epoch(1)
    assert epoch is not None and _hooks(model) == 0
    assert epoch.modules == ["0", "1", "2", "3"] and len(epoch.times) == 1
    for m, value in enumerate((pre, hidden, out, squashed)):
        assert epoch.mean[m, 0] == pytest.approx(float(value.mean()), abs=1e-6)
        assert epoch.std[m, 0] == pytest.approx(float(value.std(unbiased=False)), abs=1e-5)
        low, high = epoch.ranges[m]
        expected = np.histogram(value.clamp(low, high).numpy(), bins=8, range=(low, high))[0]
        assert np.array_equal(epoch.hist[m, 0], expected)
    assert epoch.dead[1] == pytest.approx(2 / 5)  # the in-place ReLU: its Linear's outputs were taken before it
    assert epoch.dead[0] == 0.0
    assert epoch.saturated[3, 0] == pytest.approx(float((squashed.abs() >= 0.98).float().mean()))
    after_first = [b - 0.1 * g for b, g in zip(before, grads, strict=True)]
    for p, (name, _) in enumerate(model.named_parameters()):
        assert epoch.params[p] == name
        assert epoch.grad[0, p] == pytest.approx(float(grads[p].norm()), rel=1e-5)
        expected = float((after_first[p] - before[p]).norm() / after_first[p].norm())
        assert epoch.update[0, p] == pytest.approx(expected, rel=1e-4)


def test_the_record_reads_back_equal(tmp_path: Path) -> None:
    run = _fit(tmp_path, "train.epochs=1").run_dir
    [loaded] = load_health(run)
    assert loaded.epoch == 1
    for name in ("times", "dead", "mean", "std", "hist", "grad", "update", "norm", "units"):
        assert getattr(loaded, name).shape[-1] > 0
    assert loaded.params == ["features.fc1.0.weight", "features.fc1.0.bias", "head.weight", "head.bias"]
    assert loaded.shapes[0] == [128, 784]


# -- hooks: on the training's steps only, always removed ----------------------------------------------------


def test_hooks_are_gone_after_a_run_a_failing_epoch_and_a_failing_block(tmp_path: Path, monkeypatch) -> None:
    from interp.train import loop

    models: list[nn.Module] = []
    built = loop.Trainer.__init__

    def keep(self, model, *args, **kwargs):  # type: ignore[no-untyped-def]
        models.append(model)
        built(self, model, *args, **kwargs)

    monkeypatch.setattr(loop.Trainer, "__init__", keep)
    _fit(tmp_path / "ok", "train.epochs=1")
    with pytest.raises(NonFiniteLoss):
        _fit(tmp_path / "nan", "train.epochs=1", "train.lr=1e6", "train.optimizer=sgd")
    assert len(models) == 2 and all(_hooks(m) == 0 for m in models)
    optimizer = torch.optim.SGD(models[0].parameters(), lr=0.1)
    health = Health()
    with pytest.raises(RuntimeError, match="in the block"), health.watch(models[0], optimizer):
        assert _hooks(models[0]) == 3
        raise RuntimeError("in the block")
    assert _hooks(models[0]) == 0
    assert not optimizer._optimizer_step_pre_hooks and not optimizer._optimizer_step_post_hooks


def test_evaluation_passes_are_not_recorded() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    health = Health(every=1)
    health.start_epoch()
    with health.watch(model, optimizer):
        model.eval()
        model(torch.randn(8, 4))  # eval mode
        model.train()
        with torch.no_grad():
            model(torch.randn(8, 4))  # no autograd
        assert health.end_epoch(1) is None


def test_no_host_sync_at_the_sampled_steps(monkeypatch) -> None:
    """Every way a CPU tensor reaches the host, counted over one epoch with the hooks and without: the same."""
    from interp.train.loop import train_epoch

    cfg = quick_config()
    data = load_data(cfg.data, 0)
    counts: dict[str, int] = {}
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):  # type: ignore[no-untyped-def]
            counts[_name] = counts.get(_name, 0) + 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def epoch(health: Health | None) -> dict[str, int]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        counts.clear()
        with health.watch(model, optimizer) if health else contextlib.nullcontext():
            train_epoch(model, data, optimizer, nn.CrossEntropyLoss(), 64, torch.Generator().manual_seed(0))
        return dict(counts)

    health = Health(every=2)
    health.start_epoch()
    watched, plain = epoch(health), epoch(None)
    assert health.step == 16 and len(health.param_rows) == 8  # eight sampled steps happened
    assert watched == plain


def test_bf16_autocast_is_recorded_in_float32() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    health = Health(every=1)
    health.start_epoch()
    with health.watch(model, optimizer):
        for _ in range(3):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(torch.randn(16, 8)).float().square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    epoch = health.end_epoch(1)
    assert epoch is not None and epoch.hist.sum(axis=2).tolist() == [[16 * 16] * 3, [16 * 16] * 3, [16 * 4] * 3]
    assert np.isfinite(epoch.mean).all() and np.isfinite(epoch.update).all()


def test_watch_needs_the_stage_and_a_model_and_optimizer(tmp_path: Path) -> None:
    data, _, _, eval_data = _eval_train(10)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    analyzer = Analyzer(tmp_path / "a", eval_data=eval_data, classes=data.classes, stages=["confusion"],
                        drawing_worker=False, notice=lambda m: None)
    with pytest.raises(UserError, match="add 'health' \\(or 'influence'\\) to stages"), analyzer.watch(model, optimizer):
        pass
    analyzer.close()
    analyzer = Analyzer(tmp_path / "b", eval_data=eval_data, classes=data.classes, stages=["health"],
                        drawing_worker=False, notice=lambda m: None)
    with pytest.raises(UserError, match="torch.optim.Optimizer"), analyzer.watch(model, "sgd"):  # type: ignore[arg-type]
        pass
    analyzer.close()


def test_under_torch_compile_the_steps_are_recorded_and_the_layers_skipped_with_a_notice(tmp_path: Path) -> None:
    """A compiled model does not call forward hooks added to it afterwards: say so, keep what the optimiser's
    steps give."""
    from typer.testing import CliRunner

    from interp.cli import app

    result = CliRunner().invoke(app, ["train", "--save-dir", str(tmp_path), "--set", "train.compile=true",
                                      "--set", "train.epochs=1", "--set", "data.train_limit=1000",
                                      "--set", "analysis.stages=[health]", "--set", "analysis.drawing_worker=false"])
    assert result.exit_code == 0, result.output
    assert "with train.compile the layers' outputs are not recorded" in result.output
    [epoch] = load_health(tmp_path / "mnist-mlp")
    assert epoch.modules == [] and np.isfinite(epoch.grad).all() and (epoch.update > 0).all()
    summary = read_record(tmp_path / "mnist-mlp" / "epoch_001" / "health" / "record.npz").summary
    assert any("not recorded (train.compile" in note for note in summary["notes"])
    assert sorted(p.name for p in (tmp_path / "mnist-mlp" / "epoch_001" / "health").glob("*.png")) == ["steps.png"]


def test_analyze_draws_the_recorded_epochs_and_a_run_without_them_is_skipped_with_a_reason(tmp_path: Path) -> None:
    """`interp analyze` has no training to watch: it reads the epochs the run recorded, up to the checkpoint's."""
    from interp.analyze import analyze

    run = _fit(tmp_path / "a", "train.epochs=2", "train.lr=0.05").run_dir
    notices: list[str] = []
    result = analyze(run, checkpoint="last", stages=["health"], notice=notices.append)
    assert result.epoch == 2 and result.numbers["health/findings"] == 1
    trained = read_record(run / "epoch_002" / "health" / "record.npz")
    analysed = read_record(run / "analysis" / "last" / "health" / "record.npz")
    assert analysed.summary["rows"] == trained.summary["rows"]
    assert analysed.numbers == trained.numbers
    bare = _fit(tmp_path / "b", "train.epochs=1", "analysis.stages=[confusion]").run_dir  # recorded no health
    analyze(bare, checkpoint="last", stages=["health"], notice=notices.append)
    assert any(n.startswith("health: skipped (no layer statistics") for n in notices)
