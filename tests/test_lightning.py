"""The Lightning callback with a real ``lightning.Trainer`` on CPU, and both examples, run as users run them."""

from __future__ import annotations

import copy
import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from conftest import quick_config
from interp.analysis.dynamics import load_history
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
    assert len(callback.eval_data[0]) == 200  # under the default cap (2,000): the whole validation set
    assert not list(lit.rglob("events.out.tfevents*"))  # no logger, no events: the scalars are in metrics.jsonl


def test_callback_rejects_a_bad_stage_at_once(tmp_path: Path) -> None:
    from interp.errors import UserError
    from interp.lightning import InterpCallback

    with pytest.raises(UserError, match="stages: entry 0: unknown stage 'saliencyy'"):
        InterpCallback(tmp_path / "x", classes=["a"], stages=["saliencyy"])
    with pytest.raises(UserError, match="eval_limit must be a positive whole number or None, not 0"):
        InterpCallback(tmp_path / "x", classes=["a"], eval_limit=0)
    with pytest.raises(UserError, match="unknown option 'resume'"):  # the callback resumes from its checkpoint
        InterpCallback(tmp_path / "x", classes=["a"], resume=3)


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
    """Two CPU processes with strategy="ddp": rank 0 alone writes one run, on the whole validation set (under
    the cap, every process's sample is all of its share, and rank 0 gathers them)."""
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "lightning_callback.py"), "--images", "256",
                           "--epochs", "2", "--devices", "2", "--save-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [p.name for p in tmp_path.iterdir()] == ["lit"]
    rows = [json.loads(line) for line in (tmp_path / "lit" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]  # once per epoch, not once per rank
    confusion = json.loads((tmp_path / "lit" / "epoch_002" / "confusion" / "confusion.json").read_text())
    assert sum(map(sum, confusion["matrix"])) == 64  # the whole validation set (256 // 4), not rank 0's half
    # the dataset map: each process recorded its own training batches, summed: every example once per epoch
    for epoch in load_history(tmp_path / "lit"):
        assert len(epoch.prob) == 256 and not np.isnan(epoch.prob.astype(np.float32)).any()


# -- a tiny MLP on 4 × 4 "images" of 4 classes: fast enough to train and analyse many times ----------------
CLASSES = ["a", "b", "c", "d"]


def blobs(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (count, 1, 4, 4) whose class is the signs of two of their pixels: learnable in a few steps."""
    x = torch.randn(count, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    return x, (x[:, 0, 0, 0] > 0).long() + 2 * (x[:, 0, 3, 3] > 0).long()


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


class Tiny(lightning.LightningModule):
    """``net`` trained by plain SGD; with ``logits`` its training_step returns them (the dataset map's contract)."""

    def __init__(self, net: nn.Module, logits: bool = True) -> None:
        super().__init__()
        self.net = net
        self.logits = logits

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.net(x)

    def training_step(self, batch, _):  # type: ignore[no-untyped-def]
        logits = self(batch[0])
        loss = nn.functional.cross_entropy(logits, batch[1])
        self.log("train_loss", loss)
        return {"loss": loss, "logits": logits} if self.logits else loss

    def validation_step(self, batch, _):  # type: ignore[no-untyped-def]
        self.log("val_loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(self.parameters(), lr=0.5)


def tiny_trainer(epochs: int, callbacks: list, logger=False, **options) -> lightning.Trainer:  # type: ignore[no-untyped-def]
    options = {"enable_checkpointing": False, **options}
    return lightning.Trainer(max_epochs=epochs, callbacks=callbacks, accelerator="cpu", logger=logger,
                             enable_progress_bar=False, enable_model_summary=False, **options)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def quiet(notices: list[str]):  # type: ignore[no-untyped-def]
    from interp.lightning import InterpCallback

    def make(folder: Path, **options):  # type: ignore[no-untyped-def]
        return InterpCallback(folder, CLASSES, notice=notices.append, drawing_worker=False, **options)
    return make


@pytest.mark.parametrize("kind", ["csv", "tensorboard"])
def test_the_scalars_go_to_the_trainers_logger_and_no_events_to_the_run_folder(tmp_path: Path, kind: str) -> None:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    logger = CSVLogger(tmp_path / "logs") if kind == "csv" else TensorBoardLogger(tmp_path / "logs")
    callback = quiet([])(tmp_path / "lit", stages=["confusion"])
    (x, y), val = blobs(64, 0), blobs(40, 1)
    tiny_trainer(2, [callback], logger=logger, log_every_n_steps=1).fit(
        Tiny(mlp(), logits=False), DataLoader(TensorDataset(x, y), batch_size=16), DataLoader(TensorDataset(*val), batch_size=16))
    if kind == "csv":
        with open(Path(logger.log_dir) / "metrics.csv", newline="") as handle:
            table = list(csv.DictReader(handle))
        logged = {(int(row["step"]), key): float(value) for row in table for key, value in row.items() if value}
    else:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
        events.Reload()
        logged = {(e.step, tag): e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}
    ours = {place: value for place, value in logged.items() if place[1].startswith("interp/")}
    expected = {}
    for row, step in zip(metrics(tmp_path / "lit"), (0, 4, 8), strict=True):  # 4 steps an epoch
        for tag, key in (("loss/eval", "eval_loss"), ("accuracy/eval", "eval_accuracy"), ("loss/train", "train_loss"),
                         ("confusion/accuracy", "confusion/accuracy"), ("confusion/macro_f1", "confusion/macro_f1")):
            if row[key] is not None:
                expected[step, f"interp/{tag}"] = pytest.approx(row[key], rel=1e-6)
    assert ours == expected and len(expected) == 3 * 5 - 1  # epoch 0 has no training loss
    assert any(tag == "val_loss" for _, tag in logged)  # the module's own logs are there as ever
    assert not list((tmp_path / "lit").rglob("events.out.tfevents*"))
    assert (tmp_path / "lit" / "epoch_002" / "confusion" / "confusion.png").is_file()  # figures: files of the run


def test_the_validation_sample_is_capped_and_drawn_across_the_whole_set(tmp_path: Path) -> None:
    n = 300
    position = torch.arange(n)
    val = TensorDataset(position.float().view(n, 1, 1, 1).expand(n, 1, 4, 4).clone(), position % 4)
    samples = []
    for name in ("one", "two"):
        callback = quiet([])(tmp_path / name, stages=["confusion"], eval_limit=40)
        tiny_trainer(1, [callback], num_sanity_val_steps=2).fit(  # the sanity check's 2 batches are not the sample
            Tiny(mlp(), logits=False), DataLoader(TensorDataset(*blobs(32, 0)), batch_size=16),
            DataLoader(val, batch_size=32))
        x_eval, y_eval = callback.eval_data
        samples.append(x_eval[:, 0, 0, 0].long())
        assert torch.equal(y_eval, samples[-1] % 4)  # each label with its input
        confusion = json.loads((tmp_path / name / "epoch_001" / "confusion" / "confusion.json").read_text())
        assert sum(map(sum, confusion["matrix"])) == 40  # what was analysed
    picked = samples[0].tolist()
    assert len(picked) == len(set(picked)) == 40 and picked == sorted(picked)  # in validation order
    assert picked[0] < 30 and picked[-1] >= 270 and sum(p >= 64 for p in picked) > 25  # not the first batches
    assert torch.equal(samples[0], samples[1])  # seeded: the same sample on the same data


def test_epoch_0_is_the_untrained_model_and_the_analysis_leaves_training_alone(tmp_path: Path) -> None:
    (x, y), (xv, yv) = blobs(64, 0), blobs(48, 1)
    net = mlp()
    untrained, twin = copy.deepcopy(net), copy.deepcopy(net)
    train = DataLoader(TensorDataset(x, y), batch_size=16)
    val = DataLoader(TensorDataset(xv, yv), batch_size=16)
    module = Tiny(net, logits=False)
    tiny_trainer(2, [quiet([])(tmp_path / "lit", stages=["confusion"])], num_sanity_val_steps=0).fit(module, train, val)
    plain = Tiny(twin, logits=False)
    tiny_trainer(2, []).fit(plain, train, val)  # the same training without the callback
    assert all(torch.equal(a, b) for a, b in zip(module.state_dict().values(), plain.state_dict().values(), strict=True))
    rows = metrics(tmp_path / "lit")
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    with torch.no_grad():
        for model, row in ((untrained, rows[0]), (module.eval(), rows[2])):
            logits = model(xv)
            assert row["eval_accuracy"] == pytest.approx(float((logits.argmax(1) == yv).float().mean()))
            assert row["eval_loss"] == pytest.approx(float(nn.functional.cross_entropy(logits, yv)), rel=1e-5)
    assert rows[2]["eval_loss"] < rows[0]["eval_loss"] - 0.1  # epoch 0 is not the trained model


def test_the_dataset_map_and_health_records_equal_the_analyzers(tmp_path: Path) -> None:
    """The same MLP, data, order and SGD steps in a loop of one's own with interp.Analyzer and in Lightning with
    the callback: the same per-example records and layer statistics, epoch by epoch."""
    from interp import Analyzer
    from interp.analysis.dynamics import load_history
    from interp.analysis.health import load_health
    from interp.analysis.records import read_record
    from interp.data import WithIndex

    (x, y), (xv, yv) = blobs(96, 0), blobs(40, 1)
    order = torch.randperm(96, generator=torch.Generator().manual_seed(3)).tolist()  # not 0, 1, 2 …: the same in both
    train = DataLoader(WithIndex(TensorDataset(x, y)), batch_size=16, sampler=order)
    stages = ["confusion", {"dataset_map": {"points": 0}}, {"health": {"every": 2}}, {"influence": {"every": 1}}]
    net = mlp()
    twin = copy.deepcopy(net)

    analyzer = Analyzer(tmp_path / "api", eval_data=(xv, yv), classes=CLASSES, stages=stages, train_data=(x, y),
                        notice=lambda m: None, drawing_worker=False)
    analyzer.run(net, epoch=0)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    with analyzer.watch(net, optimizer):
        for epoch in (1, 2):
            for xb, yb, index in train:
                logits = net(xb)
                optimizer.zero_grad()
                nn.functional.cross_entropy(logits, yb).backward()
                optimizer.step()
                analyzer.observe(index, logits)
            analyzer.run(net, epoch=epoch)
    analyzer.close()

    notices: list[str] = []
    callback = quiet(notices)(tmp_path / "lit", stages=stages)  # the training set from the loader's TensorDataset
    module = Tiny(twin)
    tiny_trainer(2, [callback]).fit(module, train, DataLoader(TensorDataset(xv, yv), batch_size=16))
    assert not notices
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), module.net.state_dict().values(), strict=True))
    api, lit = load_history(tmp_path / "api"), load_history(tmp_path / "lit")
    assert [e.epoch for e in lit] == [e.epoch for e in api] == [1, 2]
    for a, b in zip(api, lit, strict=True):
        for field in ("prob", "margin", "correct", "predicted"):
            np.testing.assert_array_equal(getattr(b, field), getattr(a, field))  # float16 values, bit for bit
        assert not np.isnan(b.prob).any()  # every training example, every epoch
    for epoch in (1, 2):
        a, b = (read_record(tmp_path / run / "training" / f"epoch_{epoch:03d}.npz").data["examples"]
                for run in ("api", "lit"))
        assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in ("index", "label", "size"))
    api_rows, lit_rows = metrics(tmp_path / "api"), metrics(tmp_path / "lit")
    for a, b in zip(api_rows, lit_rows, strict=True):  # the same numbers from the dataset map stage, too
        assert {k: v for k, v in b.items() if k.startswith("dataset_map/")} == {
            k: v for k, v in a.items() if k.startswith("dataset_map/")}
        assert b["eval_accuracy"] == pytest.approx(a["eval_accuracy"])
    assert "dataset_map/flagged_fraction" in lit_rows[2]
    # the layers' health: the same sampled steps (6 a epoch, every 2nd), the same numbers
    api_health, lit_health = load_health(tmp_path / "api"), load_health(tmp_path / "lit")
    assert [e.epoch for e in lit_health] == [e.epoch for e in api_health] == [1, 2]
    assert all(sum(len(m._forward_hooks) for m in n.modules()) == 0 for n in (net, module))
    for a, b in zip(api_health, lit_health, strict=True):
        assert [m.removeprefix("net.") for m in b.modules] == a.modules and len(a.times) == 3
        assert [p.removeprefix("net.") for p in b.params] == a.params
        for field in ("times", "dead", "mean", "std", "hist", "grad", "update", "norm"):
            np.testing.assert_allclose(getattr(b, field), getattr(a, field), rtol=1e-6)
    assert "health/findings" in lit_rows[2] and "health/dead/2" in api_rows[2]
    # influence: each epoch's classifier and learning rate kept alike, the same scores from them
    from interp.analysis.influence import read_checkpoints

    api_kept, lit_kept = read_checkpoints(tmp_path / "api"), read_checkpoints(tmp_path / "lit")
    assert [(c.epoch, c.lr, c.layer) for c in api_kept] == [(1, 0.5, "3"), (2, 0.5, "3")]
    assert [(c.epoch, c.lr, c.layer) for c in lit_kept] == [(1, 0.5, "net.3"), (2, 0.5, "net.3")]
    for a, b in zip(api_kept, lit_kept, strict=True):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    a, b = (read_record(tmp_path / run / "epoch_002" / "influence" / "record.npz").data for run in ("api", "lit"))
    np.testing.assert_allclose(b["self_influence"], a["self_influence"], rtol=1e-5)
    np.testing.assert_array_equal(b["queries"]["proponents"], a["queries"]["proponents"])


class Listed(Dataset):  # type: ignore[type-arg]
    """A dataset that is not a TensorDataset: the callback cannot take the training set from it."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
        return self.x[i], self.y[i]


@pytest.mark.parametrize(("missing", "says"), [
    ("index", "the training batches carry no indices: wrap the training dataset in interp.data.WithIndex"),
    ("logits", "training_step returns no logits: return {'loss': loss, 'logits': logits}"),
    ("train_data", "no training set for the indices to refer to: pass train_data=(x_train, y_train)"),
])
def test_without_its_contract_the_dataset_map_is_skipped_with_one_notice(tmp_path: Path, missing: str,
                                                                          says: str) -> None:
    from interp.data import WithIndex

    x, y = blobs(48, 0)
    dataset = {"index": TensorDataset(x, y), "logits": WithIndex(TensorDataset(x, y)),
               "train_data": WithIndex(Listed(x, y))}[missing]
    notices: list[str] = []
    callback = quiet(notices)(tmp_path / "lit", stages=["confusion", "dataset_map"],
                              train_data=(x, y) if missing == "index" else None)
    tiny_trainer(2, [callback]).fit(Tiny(mlp(), logits=missing != "logits"), DataLoader(dataset, batch_size=16),
                                    DataLoader(TensorDataset(*blobs(24, 1)), batch_size=16))
    assert len(notices) == 1 and notices[0].startswith("dataset_map: skipped (") and says in notices[0]
    assert not (tmp_path / "lit" / "examples").exists()
    assert [r["epoch"] for r in metrics(tmp_path / "lit")] == [0, 1, 2]
    assert not any(k.startswith("dataset_map/") for r in metrics(tmp_path / "lit") for k in r)


def test_a_fit_resumed_from_a_checkpoint_continues_the_same_run_folder(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from interp.analysis.records import read_record
    from interp.data import WithIndex

    x, y = blobs(64, 0)
    train = DataLoader(WithIndex(TensorDataset(x, y)), batch_size=16)
    val = DataLoader(TensorDataset(*blobs(24, 1)), batch_size=16)
    stages = ["confusion", {"dataset_map": {"points": 0}}]
    first = quiet([])(tmp_path / "lit", stages=stages)
    tiny_trainer(2, [first, ModelCheckpoint(tmp_path / "ckpt", save_top_k=-1)], enable_checkpointing=True).fit(
        Tiny(mlp()), train, val)
    assert [r["epoch"] for r in metrics(tmp_path / "lit")] == [0, 1, 2]
    after_one = next((tmp_path / "ckpt").glob("epoch=0-*.ckpt"))  # the epoch-2 row and record are done again
    notices: list[str] = []
    again = quiet(notices)(tmp_path / "lit", stages=stages)
    tiny_trainer(3, [again, ModelCheckpoint(tmp_path / "ckpt", save_top_k=-1)], enable_checkpointing=True).fit(
        Tiny(mlp(seed=5)), train, val, ckpt_path=after_one)
    assert again.run_folder == first.run_folder == tmp_path / "lit" and not notices
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "lit"]  # not lit-2
    assert [r["epoch"] for r in metrics(tmp_path / "lit")] == [0, 1, 2, 3]  # each once
    assert sorted(p.name for p in (tmp_path / "lit" / "training").iterdir()) == [
        "epoch_001.npz", "epoch_002.npz", "epoch_003.npz"]
    record = read_record(tmp_path / "lit" / "epoch_003" / "dataset_map" / "record.npz")
    assert list(record.data["epochs"]) == [1, 2, 3]  # the map goes on from the epochs recorded before


DDP_SCRIPT = '''
import sys
import lightning, torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from interp.data import WithIndex
from interp.lightning import InterpCallback

class Tiny(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    def forward(self, x):
        return self.net(x)
    def training_step(self, batch, _):
        logits = self(batch[0])
        return {"loss": nn.functional.cross_entropy(logits, batch[1]), "logits": logits}
    def validation_step(self, batch, _):
        pass
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)

def blobs(count, seed):
    x = torch.randn(count, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    return x, (x[:, 0, 0, 0] > 0).long() + 2 * (x[:, 0, 3, 3] > 0).long()

callback = InterpCallback(sys.argv[1] + "/lit", ["a", "b", "c", "d"], eval_limit=30, drawing_worker=False,
                          stages=["confusion", {"dataset_map": {"points": 0}}, {"health": {"every": 1}}])
trainer = lightning.Trainer(max_epochs=2, callbacks=[callback], accelerator="cpu", devices=2, strategy="ddp",
                            logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False)
trainer.fit(Tiny(), DataLoader(WithIndex(TensorDataset(*blobs(90, 0))), batch_size=8),
            DataLoader(TensorDataset(*blobs(50, 1)), batch_size=8))
'''


def test_the_dataset_map_and_the_sample_under_lightnings_ddp_strategy(tmp_path: Path) -> None:
    """Two CPU processes: each records its share of the training batches and samples its share of the validation
    batches; rank 0 writes one run with every training example in every epoch's record."""
    from interp.analysis.dynamics import load_history
    from interp.analysis.health import load_health
    from interp.analysis.records import read_record

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "out" / "lit"
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["lit"]
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == [0, 1, 2] and "dataset_map/flagged_fraction" in rows[2]
    confusion = json.loads((run / "epoch_002" / "confusion" / "confusion.json").read_text())
    assert sum(map(sum, confusion["matrix"])) == 30  # 15 from each process's 25
    history = load_history(run)
    assert [e.epoch for e in history] == [1, 2]
    labels = read_record(run / "training" / "epoch_001.npz").data["examples"]["label"]
    for epoch in load_health(run):  # each step's statistics summed over both processes' batches of 8
        first = epoch.modules.index("net.1")  # Linear(16, 16)
        assert epoch.hist[first, :5].sum(axis=1).tolist() == [16 * 16] * 5
    for epoch in history:  # 90 examples, 45 a process, every one seen
        assert len(epoch.prob) == 90 and not np.isnan(epoch.prob).any()
        assert np.array_equal(epoch.correct, epoch.predicted == labels)
