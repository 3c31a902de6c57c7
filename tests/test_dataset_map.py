"""The dataset map: per-example training dynamics, their columns, the stage, `interp examples`."""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import quick_config
from interp import Analyzer
from interp.analysis.dynamics import Dynamics, EpochDynamics, cartography, load_history
from interp.analysis.records import read_record
from interp.cli import app
from interp.config import load_config
from interp.data import WithIndex, flip_labels, load_data
from interp.errors import UserError
from interp.models import build_model
from interp.train import fit
from interp.train.fit import make_optimizer

runner = CliRunner()
STAGE = ["analysis.stages=[dataset_map]", "analysis.drawing_worker=false"]


def _fit(tmp_path: Path, *overrides: str, name: str | None = None, resume: Path | None = None):  # type: ignore[no-untyped-def]
    cfg = load_config(Path(resume) / "config.yaml", list(overrides)) if resume else \
        quick_config(*STAGE, *overrides)
    with contextlib.redirect_stdout(io.StringIO()):
        return fit(cfg, save_dir=tmp_path, name=name, resume=resume)


def _epoch(epoch: int, correct: list[bool], margin: list[float]) -> EpochDynamics:
    margin_array = np.array(margin, dtype=np.float16)
    prob = 1 / (1 + np.exp(-margin_array.astype(np.float32)))
    return EpochDynamics(epoch, prob.astype(np.float16), margin_array, np.array(correct), np.zeros(len(correct), np.int32))


def test_columns_by_hand() -> None:
    """Three examples over four epochs, every column worked out by hand."""
    epochs = [_epoch(1, [False, True, False], [-2.0, 1.0, -1.0]),
              _epoch(2, [True, False, False], [1.0, -0.5, -3.0]),
              _epoch(3, [False, True, False], [-1.0, 2.0, -2.0]),
              _epoch(4, [True, True, False], [3.0, 4.0, -2.0])]
    columns = cartography(epochs)
    assert columns["forgetting"].tolist() == [1, 1, 0]  # right → wrong: epoch 2→3 for #0, 1→2 for #1
    assert columns["aum"].tolist() == pytest.approx([0.25, 1.625, -2.0])
    assert columns["correctness"].tolist() == pytest.approx([0.5, 0.75, 0.0])
    assert columns["learned"].tolist() == [4, 3, -1]  # right from epoch 4 on, from 3 on, never
    assert columns["flagged"].tolist() == [False, False, True]  # AUM < 0 and wrong at the end
    margins = np.array([[-2, 1, -1, 3], [1, -0.5, 2, 4], [-1, -3, -2, -2]], dtype=np.float64)
    p = 1 / (1 + np.exp(-margins))
    assert columns["confidence"] == pytest.approx(p.mean(axis=1), abs=1e-3)
    assert columns["variability"] == pytest.approx(p.std(axis=1), abs=1e-3)


def test_an_unseen_epoch_is_left_out_of_the_means() -> None:
    seen = _epoch(1, [True], [2.0])
    missed = EpochDynamics(2, np.array([np.nan], np.float16), np.array([np.nan], np.float16), np.array([False]),
                           np.array([-1], np.int32))
    columns = cartography([seen, missed, _epoch(3, [True], [4.0])])
    assert columns["aum"][0] == pytest.approx(3.0)
    assert columns["forgetting"][0] == 0  # not seen is not forgotten


def test_recorded_dynamics_and_derived_columns_match_a_recomputation(tmp_path: Path) -> None:
    """Per epoch, the record holds each training example's numbers; the stage's columns equal a plain loop."""
    run = _fit(tmp_path, "train.epochs=3", "data.train_limit=400").run_dir
    history = load_history(run)
    assert [e.epoch for e in history] == [1, 2, 3]
    record = read_record(run / "epoch_003" / "dataset_map" / "record.npz")
    table = record.data["examples"]
    margins = np.stack([e.margin.astype(np.float32) for e in history])
    right = np.stack([e.correct for e in history])
    for i in range(len(table["index"])):
        events = sum(1 for t in range(1, 3) if right[t - 1, i] and not right[t, i])
        assert table["forgetting"][i] == events
        assert table["aum"][i] == pytest.approx(float(np.mean(margins[:, i])), abs=1e-5)
    # correctness agrees with the margin's sign and with the training accuracy of the last epoch
    assert np.array_equal(right, margins > 0)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert right[-1].mean() == pytest.approx(rows[-1]["train_accuracy"], abs=1e-9)
    assert rows[-1]["dataset_map/flagged_fraction"] == pytest.approx(float(table["flagged"].mean()))


def test_the_analyzer_records_what_interp_train_records(tmp_path: Path) -> None:
    """The same model, data and batch order by hand through Analyzer.observe: the same per-example record."""
    trained = _fit(tmp_path / "a", "train.epochs=2", "data.train_limit=300").run_dir
    cfg = quick_config(*STAGE, "train.epochs=2", "data.train_limit=300")
    torch.manual_seed(cfg.seed)
    data = load_data(cfg.data, cfg.seed)
    model = build_model(cfg.model, data.input_shape, len(data.classes))
    generator = torch.Generator().manual_seed(cfg.seed)
    x_train = data.normalize(data.train_x)
    analyzer = Analyzer(tmp_path / "b" / "mine", eval_data=(data.normalize(data.eval_x), data.eval_y),
                        classes=data.classes, mean=data.mean, std=data.std, stages=["dataset_map"],
                        train_data=(x_train, data.train_y), drawing_worker=False, notice=lambda m: None)
    analyzer.run(model, epoch=0)
    optimizer = make_optimizer(cfg, model)
    for epoch in (1, 2):
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), cfg.data.batch_size):
            index = order[start:start + cfg.data.batch_size]
            logits = model(x_train[index])
            loss = torch.nn.functional.cross_entropy(logits, data.train_y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            analyzer.observe(index, logits)
        analyzer.run(model, epoch=epoch)
    analyzer.close()
    for theirs, ours in zip(load_history(trained), load_history(analyzer.folder), strict=True):
        for key in ("prob", "margin", "correct", "predicted"):
            assert np.array_equal(getattr(theirs, key), getattr(ours, key), equal_nan=key in ("prob", "margin")), key
    a = read_record(trained / "epoch_002" / "dataset_map" / "record.npz").data["examples"]
    b = read_record(analyzer.folder / "epoch_002" / "dataset_map" / "record.npz").data["examples"]
    assert all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)


class _Stream(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    def __iter__(self):  # type: ignore[no-untyped-def]
        yield from range(3)


def test_analyzer_refuses_indices_that_are_not_positions(tmp_path: Path) -> None:
    x, y = torch.randn(20, 1, 4, 4), torch.arange(20) % 2
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    analyzer = Analyzer(tmp_path / "r", eval_data=(x, y), classes=["a", "b"], stages=["dataset_map"],
                        train_data=(x, y), drawing_worker=False, notice=lambda m: None)
    with pytest.raises(UserError, match="outside the training set"):
        analyzer.observe(torch.tensor([3, 25]), model(x[:2]))
    for _ in range(2):  # a loader that numbers each batch from 0: the same indices again and again
        analyzer.observe(torch.arange(10), model(x[:10]))
    with pytest.raises(UserError, match="indices repeat within an epoch"):
        analyzer.run(model, epoch=1)
    analyzer.close()
    with pytest.raises(UserError, match="no stable positions"):
        WithIndex(_Stream())
    assert WithIndex(torch.utils.data.TensorDataset(x, y))[7][2] == 7


def test_resume_continues_the_dynamics_exactly(tmp_path: Path) -> None:
    straight = _fit(tmp_path / "a", "train.epochs=3", "data.train_limit=300").run_dir
    first = _fit(tmp_path / "b", "train.epochs=2", "data.train_limit=300").run_dir
    resumed = _fit(tmp_path / "b", "train.epochs=3", resume=first).run_dir
    assert resumed == first
    for epoch in (1, 2, 3):
        name = f"training/epoch_{epoch:03d}.npz"
        assert (straight / name).read_bytes() == (resumed / name).read_bytes(), name
    a = read_record(straight / "epoch_003" / "dataset_map" / "record.npz")
    b = read_record(resumed / "epoch_003" / "dataset_map" / "record.npz")
    assert b.data["epochs"] == [1, 2, 3]
    assert all(np.array_equal(a.data["examples"][k], b.data["examples"][k], equal_nan=True) for k in a.data["examples"])


def test_shifted_labels_are_found(tmp_path: Path) -> None:
    """10 % of the sample's training labels shifted, 10 epochs of the default MLP: the label-issue ranking's
    precision among its top K (K = the number shifted) is at least 0.88, and the flagged set holds most of them."""
    cfg = load_config(None, ["train.epochs=10", "train.device=cpu", "data.label_noise=0.1", "analysis.every=10",
                             *STAGE])
    with contextlib.redirect_stdout(io.StringIO()):
        run = fit(cfg, save_dir=tmp_path).run_dir
    clean = load_data(load_config(None, []).data, 0).train_y
    noisy, shifted = flip_labels(clean, 0.1, 10, 0)
    assert len(shifted) == 500 and int((noisy != clean).sum()) == 500
    table = read_record(run / "epoch_010" / "dataset_map" / "record.npz").data["examples"]
    assert np.array_equal(table["label"], noisy.numpy())  # the labels the model was trained on
    top = np.argsort(-table["score"], kind="stable")[:500]
    precision = np.isin(table["index"][top], shifted.numpy()).mean()
    assert precision >= 0.88, precision
    assert table["flagged"][shifted.numpy()].mean() >= 0.9
    # `interp examples --json` lists the same ranking
    done = runner.invoke(app, ["examples", str(run), "--label-issues", "--top", "500", "--json"])
    assert done.exit_code == 0, done.output
    listed = json.loads(done.output)
    scores = table["score"][top]
    assert [row["score"] for row in listed] == pytest.approx(scores.tolist())  # the same ranking (ties aside)
    position = {int(i): k for k, i in enumerate(table["index"])}
    assert all(table["score"][position[row["index"]]] == row["score"] for row in listed)
    assert len({row["index"] for row in listed}) == 500
    assert {"index", "label", "predicted", "score"} <= set(listed[0])
    assert listed[0]["score"] == pytest.approx(float(table["score"][top[0]]))


def test_clean_labels_flag_few(tmp_path: Path) -> None:
    cfg = load_config(None, ["train.epochs=10", "train.device=cpu", "analysis.every=10", *STAGE])
    with contextlib.redirect_stdout(io.StringIO()):
        run = fit(cfg, save_dir=tmp_path).run_dir
    record = read_record(run / "epoch_010" / "dataset_map" / "record.npz")
    table = record.data["examples"]
    assert 0 < table["flagged"].mean() < 0.03  # 1.9 % of the 5,000 when measured
    # the gallery shows the 24 highest scores, highest first
    shown = record.figures["label_issues"]["fields"]
    top = np.sort(table["score"])[::-1][:24]
    assert shown["score"].tolist() == pytest.approx(top.tolist())
    assert set(shown["index"].tolist()) <= set(table["index"][table["score"] >= top[-1]].tolist())


def test_examples_command(tmp_path: Path) -> None:
    run = _fit(tmp_path, "train.epochs=3", "data.train_limit=400").run_dir
    table = read_record(run / "epoch_003" / "dataset_map" / "record.npz").data["examples"]
    for flag, key, wanted in (("--hard", "confidence", table["region"] == 2),
                              ("--ambiguous", "variability", table["region"] == 1),
                              ("--forgotten", "forgetting", table["forgetting"] > 0)):
        done = runner.invoke(app, ["examples", str(run), flag, "--top", "0", "--json"])
        assert done.exit_code == 0, done.output
        rows = json.loads(done.output)
        assert sorted(row["index"] for row in rows) == sorted(table["index"][wanted].tolist())
        values = [row[key] for row in rows]
        assert values == sorted(values, reverse=key != "confidence")
    shown = runner.invoke(app, ["examples", str(run), "--top", "3"])
    assert shown.exit_code == 0 and "label issues: 3 of" in shown.output
    both = runner.invoke(app, ["examples", str(run), "--hard", "--forgotten"])
    assert both.exit_code == 2 and "give one of" in both.output
    missing = runner.invoke(app, ["examples", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "no run folder" in missing.output
    no_map = _fit(tmp_path, "train.epochs=1", "analysis.stages=[confusion]", name="plain").run_dir
    done = runner.invoke(app, ["examples", str(no_map)])
    assert done.exit_code == 2 and "no dataset_map record" in done.output


def test_a_dataset_past_the_cap_follows_a_fixed_subset(tmp_path: Path) -> None:
    labels = torch.arange(100) % 10
    dynamics = Dynamics(labels, 10, cells=400)  # 40 examples × 10 classes
    assert dynamics.tracked == 40 and dynamics.buffer.shape == (41, 10)
    logits = torch.randn(100, 10)
    dynamics.start_epoch()
    for start in range(0, 100, 32):
        dynamics.observe(torch.arange(start, min(start + 32, 100)), logits[start:start + 32])
    epoch = dynamics.end_epoch(1)
    chosen = torch.as_tensor(dynamics.history.index)
    expected = torch.softmax(logits[chosen], dim=1).gather(1, labels[chosen, None])[:, 0]
    assert np.allclose(epoch.prob.astype(np.float32), expected.numpy(), atol=1e-3)
    assert np.array_equal(epoch.predicted, logits[chosen].argmax(dim=1).int().numpy())
    run = _fit(tmp_path, "train.epochs=1", "data.train_limit=300", "analysis.stages=[{dataset_map: {cells: 1000}}]")
    record = read_record(run.run_dir / "epoch_001" / "dataset_map" / "record.npz")
    assert len(record.data["examples"]["index"]) == 100 and record.data["size"] == 300
    assert "a fixed random 100 of 300" in record.summary["title"]


def test_projector_metadata_carries_the_columns(tmp_path: Path) -> None:
    run = _fit(tmp_path, "train.epochs=2", "data.train_limit=300",
               "analysis.stages=[{dataset_map: {points: 50}}]").run_dir
    config = (run / "projector_config.pbtxt").read_text()
    folder = re.search(r'metadata_path: "(00002/[^"]*examples[^"]*)/metadata.tsv"', config)
    assert folder, config
    assert 'tensor_name: "training examples, last epoch (2)"' in config
    lines = (run / folder.group(1) / "metadata.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    assert header[:4] == ["label", "predicted", "region", "label_issue"] and "aum" in header
    table = read_record(run / "epoch_002" / "dataset_map" / "record.npz").data["examples"]
    where = {int(i): k for k, i in enumerate(table["index"])}
    assert len(lines) == 51
    for line in lines[1:]:
        row = dict(zip(header, line.split("\t"), strict=True))
        k = where[int(row["index"])]
        assert row["label_issue"] == ("yes" if table["flagged"][k] else "no")
        assert float(row["aum"]) == pytest.approx(float(table["aum"][k]), abs=1e-3)
        assert row["label"] == str(int(table["label"][k]))
    vectors = np.loadtxt(run / folder.group(1) / "tensors.tsv")
    assert vectors.shape == (50, 128)  # the MLP's 128 hidden units feed its classifier


def test_analyze_maps_the_recorded_epochs(tmp_path: Path) -> None:
    """`interp analyze` has no training to watch: it reads the epochs the run recorded, up to the checkpoint's."""
    from interp.analyze import analyze

    run = _fit(tmp_path, "train.epochs=3", "data.train_limit=400", "analysis.stages=[{dataset_map: {points: 20}}]")
    result = analyze(run.run_dir, checkpoint="last", stages=["dataset_map"])
    assert result.epoch == 3 and "dataset_map/flagged_fraction" in result.numbers
    a = read_record(run.run_dir / "epoch_003" / "dataset_map" / "record.npz")
    b = read_record(run.run_dir / "analysis" / "last" / "dataset_map" / "record.npz")
    assert b.data["epochs"] == [1, 2, 3]
    assert all(np.array_equal(a.data["examples"][k], b.data["examples"][k], equal_nan=True) for k in a.data["examples"])
    assert 'tensor_name: "training examples, of analysis/last (epoch 3)"' in (run.run_dir / "projector_config.pbtxt").read_text()
