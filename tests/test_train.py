from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import quick_config
from interp.checkpoint import load_checkpoint, save_checkpoint
from interp.config import load_config
from interp.errors import UserError
from interp.train import fit


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_end_to_end_run_writes_the_run_directory_contract(tmp_path: Path) -> None:
    result = fit(quick_config(), save_dir=tmp_path)
    run = result.run_dir
    assert run == tmp_path / "mnist-mlp"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    for row in rows[1:]:
        assert {"train_loss", "eval_loss", "train_accuracy", "eval_accuracy", "seconds"} <= row.keys()
        assert row["seconds"] > 0
    assert rows[0]["train_loss"] is None and 0.0 <= rows[0]["eval_accuracy"] <= 0.3  # untrained: about chance
    assert rows[2]["eval_accuracy"] > 0.8
    assert rows[2]["train_loss"] < rows[1]["train_loss"]

    logged = scalars(run)
    assert [step for step, _ in logged["loss/train"]] == [1, 2]
    assert [step for step, _ in logged["accuracy/eval"]] == [0, 1, 2]
    assert logged["loss/eval"][-1][1] == pytest.approx(rows[2]["eval_loss"], rel=1e-5)
    assert logged["accuracy/train"][-1][1] == pytest.approx(rows[2]["train_accuracy"], rel=1e-5)
    assert logged["lr"][-1][1] == pytest.approx(0.001)
    assert logged["confusion/accuracy"][-1][1] == pytest.approx(rows[2]["eval_accuracy"], rel=1e-5)

    saved = load_config(run / "config.yaml")
    assert saved.train.epochs == 2 and saved.data.train_limit == 1000
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["epoch"] == 2 and {"model", "optimizer", "rng", "config"} <= last.keys()
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["metrics"]["eval_accuracy"] == max(r["eval_accuracy"] for r in rows)
    assert not list((run / "checkpoints").glob("*.tmp"))


def test_confusion_matrix_sums_to_the_evaluation_set(tmp_path: Path) -> None:
    run = fit(quick_config("train.epochs=1"), save_dir=tmp_path).run_dir
    report = json.loads((run / "epoch_001" / "confusion" / "confusion.json").read_text())
    matrix = torch.tensor(report["matrix"])
    assert matrix.sum() == 1000  # the sample's evaluation set
    from interp.config import DataConfig
    from interp.data import load_data

    eval_y = load_data(DataConfig()).eval_y
    assert matrix.sum(dim=1).tolist() == torch.bincount(eval_y).tolist()  # rows are the true classes
    assert report["accuracy"] == pytest.approx(matrix.trace().item() / 1000)
    rows = (run / "epoch_001" / "confusion" / "per_class.csv").read_text().splitlines()
    assert rows[0] == "class,precision,recall,f1,support" and len(rows) == 11
    precision = matrix.diag() / matrix.sum(dim=0).clamp(min=1)
    assert float(rows[1].split(",")[1]) == pytest.approx(precision[0].item(), abs=1e-6)


def test_resumed_run_ends_with_the_same_weights(tmp_path: Path) -> None:
    straight = fit(quick_config("train.epochs=3"), save_dir=tmp_path / "a").run_dir
    first = fit(quick_config("train.epochs=1"), save_dir=tmp_path / "b").run_dir
    resumed = fit(quick_config("train.epochs=3"), resume=first).run_dir
    assert resumed == first
    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert b["epoch"] == 3
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    rows = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    straight_rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert rows[3]["eval_loss"] == pytest.approx(straight_rows[3]["eval_loss"], rel=1e-6)


def test_existing_run_is_never_overwritten(tmp_path: Path) -> None:
    one = fit(quick_config("train.epochs=0"), save_dir=tmp_path).run_dir
    marker = one / "metrics.jsonl"
    before = marker.read_text()
    two = fit(quick_config("train.epochs=0"), save_dir=tmp_path).run_dir
    assert two == tmp_path / "mnist-mlp-2" and marker.read_text() == before
    with pytest.raises(UserError, match="already exists"):
        fit(quick_config("train.epochs=0"), save_dir=tmp_path, name="mnist-mlp")


def test_pickled_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": Path("x")}, path)  # a pickled class, not plain data
    with pytest.raises(UserError, match="pickled code"):
        load_checkpoint(path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")


def test_checkpoint_replace_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}}, path)

    class Boom:
        def __reduce__(self):  # fails half-way through torch.save
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_checkpoint({"model": {"w": torch.zeros(2)}, "x": Boom()}, path)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_default_config_reaches_ninety_percent(tmp_path: Path) -> None:
    cfg = load_config(None, ["analysis.stages=[confusion]", "train.device=cpu"])
    rows = fit(cfg, save_dir=tmp_path).metrics
    assert len(rows) == cfg.train.epochs + 1
    assert rows[-1]["eval_accuracy"] >= 0.90


def test_allconv_config_trains_on_cifar10_files(tmp_path: Path) -> None:
    from conftest import make_cifar_batches

    make_cifar_batches(tmp_path / "data", per_batch=20)
    cfg = load_config(Path(__file__).parent.parent / "configs" / "cifar10_allconv.yaml",
                      [f"data.root={tmp_path / 'data'}", "data.download=false", "model.width=4", "train.epochs=1",
                       "train.device=cpu", "analysis.stages=[confusion]"])
    result = fit(cfg, save_dir=tmp_path / "save")
    assert [r["epoch"] for r in result.metrics] == [0, 1]
    report = json.loads((result.run_dir / "epoch_001" / "confusion" / "confusion.json").read_text())
    assert report["classes"][0] == "airplane" and torch.tensor(report["matrix"]).sum() == 20


def test_mlp_trains_on_mnist_files_in_torchvision_layout(tmp_path: Path, mnist_root: Path) -> None:
    cfg = quick_config("data.dataset=mnist", f"data.root={mnist_root}", "data.download=false",
                       "data.train_limit=null", "train.epochs=3")
    rows = fit(cfg, save_dir=tmp_path / "save").metrics
    assert rows[-1]["eval_accuracy"] > 0.9  # the synthetic digits are easy: one bright square per class
