"""Influence (TracIn over the run's per-epoch checkpoints): Captum's scores, the copied-image known answer,
self-influence on shifted labels, the stage's record and `interp examples --influence`."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from interp.analysis.influence import Checkpoint, classifier_part, read_checkpoints, snapshot_path, tracin
from interp.analysis.records import read_record
from interp.config import load_config
from interp.data import flip_labels, load_data
from interp.errors import UserError
from interp.models import build_model, features_layer
from interp.run import Run
from interp.train import fit
from interp.train.fit import load_model


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MLP run with full snapshots and a cosine learning-rate schedule (a different rate each epoch)."""
    cfg = load_config(None, ["train.device=cpu", "data.train_limit=300", "train.epochs=3", "train.lr=0.01",
                             "train.schedule=cosine", "analysis.snapshots=true",
                             "analysis.stages=[{influence: {queries: 4, top: 5, self_influence: 8}}]"])
    with contextlib.redirect_stdout(io.StringIO()):
        return fit(cfg, save_dir=tmp_path_factory.mktemp("influence"), name="run").run_dir


def test_the_run_keeps_each_epochs_classifier_and_snapshot(run: Path) -> None:
    _, model, _, state, _ = load_model(Run(run), "last")
    checkpoints = read_checkpoints(run)
    assert [c.epoch for c in checkpoints] == [1, 2, 3]
    assert all(c.snapshot == snapshot_path(run, c.epoch) for c in checkpoints)
    rates = [c.lr for c in checkpoints]
    assert rates[0] > rates[1] > rates[2] > 0  # the cosine schedule's mean rate per epoch
    last = checkpoints[-1]
    assert last.layer == "head"
    torch.testing.assert_close(last.weight, model.head.weight.detach())
    torch.testing.assert_close(last.bias, model.head.bias.detach())
    for c in checkpoints:  # each epoch's classifier is the one in its snapshot
        snap = torch.load(c.snapshot, weights_only=True)["model"]
        torch.testing.assert_close(c.weight, snap["head.weight"])


def _captum_checkpoints(checkpoints: list[Checkpoint]):  # type: ignore[no-untyped-def]
    rates = {str(c.snapshot): c.lr for c in checkpoints}

    def load(model: nn.Module, path: str) -> float:
        model.load_state_dict(torch.load(path, weights_only=True)["model"])
        return rates[path]

    return [str(c.snapshot) for c in checkpoints], load


def test_raw_scores_equal_captums_tracin(run: Path) -> None:
    """The fast variant equals Captum's TracInCPFast (the classifier's gradients), the full one Captum's TracInCP
    (every parameter's), on the same checkpoints, learning rates and examples; self-influence too."""
    from captum.influence import TracInCP, TracInCPFast

    _, model, data, _, _ = load_model(Run(run), "last")
    checkpoints = read_checkpoints(run)
    queries = torch.tensor([0, 5, 17, 400])
    fast = tracin(model, data, queries, checkpoints, variant="fast", batch_size=128)
    full = tracin(model, data, queries, checkpoints, variant="full", batch_size=64)
    train = torch.utils.data.TensorDataset(data.normalize(data.train_x), data.train_y)
    test = (data.normalize(data.eval_x[queries]), data.eval_y[queries])
    paths, load = _captum_checkpoints(checkpoints)
    reference = TracInCPFast(model, model.head, train, paths, checkpoints_load_func=load,
                             loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=100)
    expected = reference.influence(test).numpy()
    assert np.abs(fast.raw - expected).max() <= 1e-4 * np.abs(expected).max()
    own = reference.self_influence(torch.utils.data.DataLoader(train, batch_size=100)).numpy()
    assert np.abs(fast.self_influence - own).max() <= 1e-4 * own.max()

    # the cosine: per checkpoint the raw score over the two gradients' norms (from Captum's self-influence of each
    # side at that checkpoint alone), averaged with the rates as weights
    cosine = np.zeros_like(expected)
    for path, c in zip(paths, checkpoints, strict=True):
        one = TracInCPFast(model, model.head, train, [path], checkpoints_load_func=load,
                           loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=100)
        raw = one.influence(test).numpy()
        own_train = one.self_influence(torch.utils.data.DataLoader(train, batch_size=100)).numpy()
        own_test = one.self_influence(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*test))).numpy()
        cosine += c.lr * raw / np.sqrt(own_test[:, None] * own_train[None, :])
    cosine /= sum(c.lr for c in checkpoints)
    np.testing.assert_allclose(fast.cosine, cosine, atol=1e-4)

    reference = TracInCP(model, train, paths, checkpoints_load_func=load, loss_fn=nn.CrossEntropyLoss(reduction="none"),
                         batch_size=100)
    expected = reference.influence(test).numpy()
    assert np.abs(full.raw - expected).max() <= 1e-4 * np.abs(expected).max()
    own = reference.self_influence(torch.utils.data.DataLoader(train, batch_size=100)).numpy()
    assert np.abs(full.self_influence - own).max() <= 1e-4 * own.max()
    assert np.abs(full.cosine).max() <= 1 + 1e-5


def test_without_snapshots_each_epochs_classifier_sits_on_the_final_features(run: Path, tmp_path: Path) -> None:
    """The kept classifiers alone (no snapshots): Captum's TracInCPFast on checkpoints made of the final model
    with each epoch's classifier in place."""
    from captum.influence import TracInCPFast

    _, model, data, _, _ = load_model(Run(run), "last")
    kept = [Checkpoint(c.epoch, c.lr, c.layer, c.weight, c.bias, None) for c in read_checkpoints(run)]
    model.train()
    model.head.eval()  # a part frozen on purpose
    modes = {m: m.training for m in model.modules()}
    found = tracin(model, data, torch.tensor([3, 9]), kept)
    assert {m: m.training for m in model.modules()} == modes  # left as it was, each part
    assert model.training and not model.head.training
    assert found.features == "the final model, each epoch's classifier on them"
    final = {k: v.clone() for k, v in model.state_dict().items()}
    paths, rates = [], {}
    for c in kept:
        path = tmp_path / f"made_{c.epoch}.pt"
        torch.save({"model": {**final, "head.weight": c.weight, "head.bias": c.bias}}, path)
        paths.append(str(path))
        rates[str(path)] = c.lr

    def load(net: nn.Module, path: str) -> float:
        net.load_state_dict(torch.load(path, weights_only=True)["model"])
        return rates[path]

    train = torch.utils.data.TensorDataset(data.normalize(data.train_x), data.train_y)
    reference = TracInCPFast(model, model.head, train, paths, checkpoints_load_func=load,
                             loss_fn=nn.CrossEntropyLoss(reduction="sum"), batch_size=100)
    expected = reference.influence((data.normalize(data.eval_x[[3, 9]]), data.eval_y[[3, 9]])).numpy()
    assert np.abs(found.raw - expected).max() <= 1e-4 * np.abs(expected).max()


def train_keeping_classifiers(data, epochs: int = 5) -> tuple[nn.Module, list[Checkpoint]]:  # type: ignore[no-untyped-def]
    """The default MLP trained with Adam on ``data``, each epoch's classifier kept as the run keeps it."""
    model = build_model(load_config(None, []).model, data.input_shape, 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    checkpoints = []
    generator = torch.Generator().manual_seed(0)
    for epoch in range(1, epochs + 1):
        for batch in torch.randperm(len(data.train_x), generator=generator).split(64):
            loss = nn.functional.cross_entropy(model(data.normalize(data.train_x[batch])), data.train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        part = classifier_part(model, 1e-3)
        assert part is not None
        checkpoints.append(Checkpoint.of(epoch, part))
    return model.eval(), checkpoints


def test_an_evaluation_image_copied_into_training_is_its_own_top_proponent() -> None:
    """Evaluation image 0 placed (with its label) among 1,000 training digits: by the gradient cosine it is
    its own top proponent; each epoch's classifier kept as the run keeps it."""
    torch.manual_seed(0)
    cfg = load_config(None, ["train.device=cpu", "data.train_limit=1000"])
    data = load_data(cfg.data, 0)
    target = 123
    data.train_x[target] = data.eval_x[0]
    data.train_y[target] = data.eval_y[0]
    model, checkpoints = train_keeping_classifiers(data)
    found = tracin(model, data, torch.tensor([0]), checkpoints)
    assert int(np.argmax(found.cosine[0])) == target
    assert found.cosine[0, target] > 0.99


def test_self_influence_finds_shifted_labels() -> None:
    """10 % of 1,000 training labels shifted to another class: most of the 100 examples with the highest
    self-influence are shifted ones (chance: 10 %)."""
    torch.manual_seed(0)
    cfg = load_config(None, ["train.device=cpu", "data.train_limit=1000"])
    data = load_data(cfg.data, 0)
    data.train_y, shifted = flip_labels(data.train_y, 0.1, 10, 0)
    model, checkpoints = train_keeping_classifiers(data)
    found = tracin(model, data, torch.tensor([0]), checkpoints)
    top = np.argsort(-found.self_influence)[: len(shifted)]
    assert np.isin(top, shifted.numpy()).mean() >= 0.6


def test_the_stage_records_galleries_and_self_influence(run: Path) -> None:
    record = read_record(run / "epoch_003" / "influence" / "record.npz")
    assert set(record.figures) == {"probes", "top_losses", "self_influence"}
    queries = record.data["queries"]
    assert len(queries["index"]) == 10 + 4 and int(np.sum(queries["probe"])) == 10
    _, model, data, _, _ = load_model(Run(run), "last")
    found = tracin(model, data, torch.as_tensor(queries["index"]), read_checkpoints(run))
    expected = np.argsort(-found.cosine, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(queries["proponents"], expected)
    np.testing.assert_allclose(queries["proponent_scores"], np.take_along_axis(found.cosine, expected, 1), rtol=1e-5)
    assert (np.diff(queries["opponent_scores"], axis=1) >= 0).all()  # most negative first
    np.testing.assert_allclose(record.data["self_influence"], found.self_influence, rtol=1e-5)
    assert record.data["about"]["features"] == "each checkpoint's snapshot"
    for epoch in (1, 2):  # final analysis only
        assert not (run / f"epoch_{epoch:03d}" / "influence" / "probes.png").exists()


def test_interp_examples_influence(run: Path) -> None:
    _, model, data, _, _ = load_model(Run(run), "last")
    found = tracin(model, data, torch.tensor([7]), read_checkpoints(run))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "interp", "examples", str(run), *args], capture_output=True,
                              text=True, timeout=300)

    proc = cli("--influence", "7", "--top", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(proc.stdout)
    assert listed["eval_index"] == 7 and listed["label"] == int(data.eval_y[7])
    assert [r["index"] for r in listed["proponents"]] == np.argsort(-found.cosine[0], kind="stable")[:4].tolist()
    assert [r["index"] for r in listed["opponents"]] == np.argsort(found.cosine[0], kind="stable")[:4].tolist()
    assert all(r["label"] == int(data.train_y[r["index"]]) for r in listed["proponents"])
    proc = cli("--influence", "7", "--top", "3", "--raw", "--json")
    assert [r["index"] for r in json.loads(proc.stdout)["proponents"]] == \
        np.argsort(-found.raw[0], kind="stable")[:3].tolist()
    proc = cli("--self-influence", "--top", "5", "--json")
    assert [r["index"] for r in json.loads(proc.stdout)["examples"]] == \
        np.argsort(-found.self_influence, kind="stable")[:5].tolist()
    proc = cli("--influence", "5000")
    assert proc.returncode == 2 and proc.stderr.strip() == \
        "error: --influence 5000: the evaluation set has 1000 images (0 to 999)"


def test_the_full_variant_needs_snapshots_and_the_fast_one_a_linear_classifier(tmp_path: Path) -> None:
    cfg = load_config(None, ["train.device=cpu", "data.train_limit=100"])
    data = load_data(cfg.data, 0)
    model = build_model(cfg.model, data.input_shape, 10).eval()
    part = classifier_part(model, 0.1)
    only = [Checkpoint.of(1, part)]
    with pytest.raises(UserError, match="full variant needs a snapshot"):
        tracin(model, data, torch.tensor([0]), only, variant="full")
    with pytest.raises(UserError, match="kept no per-epoch classifier"):
        tracin(model, data, torch.tensor([0]), [])

    class Scaled(nn.Module):  # logits = 2 × the classifier's output: not W·a + b
        def __init__(self, inner: nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x) * 2

    scaled = Scaled(model)
    name = "inner." + features_layer(model)[0]
    with pytest.raises(UserError, match="not the output of its classifier"):
        tracin(scaled, data, torch.tensor([0]), [Checkpoint(1, 0.1, name, only[0].weight, only[0].bias)])


def test_a_model_returning_more_than_logits(tmp_path: Path) -> None:
    """A model whose forward returns a dict is evaluated through LogitsOnly: its classifier and snapshots are
    the trained model's, and the scores are those of the same weights returning plain logits."""
    from interp.checkpoint import save_checkpoint
    from interp.models import LogitsOnly

    class Dict(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU())
            self.head = nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.head(self.body(x)), "extra": x.mean()}

    cfg = load_config(None, ["train.device=cpu", "data.train_limit=200"])
    data = load_data(cfg.data, 0)
    torch.manual_seed(0)
    model = Dict()
    checkpoints = []
    for epoch in (1, 2):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        path = tmp_path / f"epoch_{epoch:03d}.pt"
        save_checkpoint({"format": 1, "epoch": epoch, "model": model.state_dict()}, path)
        part = classifier_part(model, 0.1)
        checkpoints.append(Checkpoint.of(epoch, part, path))
    plain = nn.Sequential(model.body, model.head)
    wrapped = tracin(LogitsOnly(model), data, torch.tensor([0, 1]), checkpoints)
    expected = tracin(plain, data, torch.tensor([0, 1]),
                      [Checkpoint(c.epoch, c.lr, "1", c.weight, c.bias, None) for c in checkpoints[-1:]])
    assert checkpoints[-1].layer == "head" and wrapped.features == "each checkpoint's snapshot"
    full = tracin(LogitsOnly(model), data, torch.tensor([0, 1]), checkpoints, variant="full")
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    plain_checkpoints = []
    for c in checkpoints:  # the same snapshots under the plain model's names (body.1 → 0.1, head → 1)
        state = torch.load(c.snapshot, weights_only=True)["model"]
        state = {k.replace("body.", "0.").replace("head.", "1."): v for k, v in state.items()}
        save_checkpoint({"model": state}, renamed / c.snapshot.name)
        plain_checkpoints.append(Checkpoint(c.epoch, c.lr, "1", c.weight, c.bias, renamed / c.snapshot.name))
    expected_full = tracin(copy.deepcopy(plain), data, torch.tensor([0, 1]), plain_checkpoints, variant="full")
    np.testing.assert_allclose(full.raw, expected_full.raw, rtol=1e-5, atol=1e-7)
    last = tracin(LogitsOnly(model), data, torch.tensor([0, 1]), checkpoints[-1:])
    np.testing.assert_allclose(last.raw, expected.raw, rtol=1e-5, atol=1e-7)
    assert not np.allclose(wrapped.raw, last.raw)  # the first snapshot's own features count too


def test_a_classifier_the_fast_variant_cannot_use_is_said_in_one_line(tmp_path: Path) -> None:
    """A Linear applied to every row of the image (its input (B, 28, 28), not (B, D)): the fast variant says it
    does not apply; analysis.features_layer naming a block without weights of its own: training goes on
    without keeping a classifier, and says so once."""
    class Rows(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(28, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x[:, 0]).mean(dim=1)

    data = load_data(load_config(None, ["train.device=cpu", "data.train_limit=100"]).data, 0)
    model = Rows()
    part = classifier_part(model, 0.1)
    kept = [Checkpoint.of(1, part)]
    with pytest.raises(UserError, match="not the output of its classifier head"):
        tracin(model, data, torch.tensor([0]), kept)

    cfg = load_config(None, ["train.device=cpu", "data.train_limit=100", "train.epochs=1",
                             "analysis.features_layer=features.fc1", "analysis.stages=[]"])
    from interp.train.loop import SilentReporter

    class Notices(SilentReporter):
        said: list[str] = []

        def notice(self, message: str) -> None:
            self.said.append(message)

    reporter = Notices()
    run = fit(cfg, save_dir=tmp_path, name="block", reporter=reporter).run_dir
    assert read_checkpoints(run) == []
    assert sum("influence: the classifier's weights are not kept" in m for m in reporter.said) == 1


def test_the_analyzer_keeps_the_classifier_and_its_groups_rate(tmp_path: Path) -> None:
    """A loop of one's own: inside watch(), each epoch's classifier and the rate of the parameter group holding
    it (not the first group's); watch() without a stage that reads it is one clear mistake."""
    from interp import Analyzer

    data = load_data(load_config(None, ["train.device=cpu", "data.train_limit=200"]).data, 0)
    x, y = data.normalize(data.train_x), data.train_y
    evaluation = (data.normalize(data.eval_x[:100]), data.eval_y[:100])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))
    optimizer = torch.optim.SGD([{"params": model[1].parameters(), "lr": 0.01},
                                 {"params": model[3].parameters(), "lr": 0.05}])
    with Analyzer(tmp_path / "own", eval_data=evaluation, classes=[str(c) for c in range(10)], stages=["influence"],
                  train_data=(x, y), epochs=2, notice=lambda m: None, drawing_worker=False) as analyzer:
        analyzer.run(model, epoch=0)
        with analyzer.watch(model, optimizer):
            for epoch in (1, 2):
                for batch in torch.arange(200).split(50):
                    optimizer.zero_grad()
                    nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
                    optimizer.step()
                analyzer.run(model, epoch=epoch)
    kept = read_checkpoints(tmp_path / "own")
    assert [(c.epoch, c.lr, c.layer) for c in kept] == [(1, 0.05, "3"), (2, 0.05, "3")]
    torch.testing.assert_close(kept[-1].weight, model[3].weight.detach())
    record = read_record(tmp_path / "own" / "epoch_002" / "influence" / "record.npz")
    assert record.data["self_influence"].shape == (200,)
    other = Analyzer(tmp_path / "other", eval_data=evaluation, classes=[str(c) for c in range(10)],
                     stages=["confusion"], notice=lambda m: None)
    with other, pytest.raises(UserError, match="add 'health' \\(or 'influence'\\)"), other.watch(model, optimizer):
        pass
