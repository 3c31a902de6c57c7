"""The evaluation-set diagnostics: the calibration stage's ECE against torchmetrics, and the top-losses stage's
images, maps and confused pairs against independent computations, on a tiny trained model."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix
from torchmetrics.classification import BinaryCalibrationError, MulticlassCalibrationError

import interp
from interp.analysis.evaluation import Evaluation
from interp.analysis.records import draw
from interp.analysis.runner import StageContext, run_stages
from interp.config import DataConfig, ModelConfig
from interp.data import load_data, select_probe
from interp.errors import UserError
from interp.models import build_model
from interp.run import Run
from interp.stages import STAGES, default_stage_specs
from interp.stages.calibration import bin_edges, class_ece, top_label_ece
from interp.stages.top_losses import confused_pairs

TOL = 1e-6


def theirs(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> tuple[float, np.ndarray]:
    """torchmetrics' top-label ECE and each class's binary ECE of p_k against 1[label = k]."""
    classes = probs.shape[1]
    overall = MulticlassCalibrationError(num_classes=classes, n_bins=bins, norm="l1")(probs, labels)
    per_class = [BinaryCalibrationError(n_bins=bins, norm="l1")(probs[:, k], (labels == k).long())
                 for k in range(classes)]
    return float(overall), np.array([float(v) for v in per_class])


def mine(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> tuple[float, np.ndarray]:
    return float(top_label_ece(probs, labels, bins)["ece"]), class_ece(probs, labels, bins)


def assert_agrees(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> None:
    (a, per_a), (b, per_b) = mine(probs, labels, bins), theirs(probs, labels, bins)
    assert abs(a - b) <= TOL, (a, b)
    np.testing.assert_allclose(per_a, per_b, rtol=0, atol=TOL)


def exact(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """The top-label ECE with torchmetrics' bins (``torch.bucketize`` on its float32 edges) and the sums in
    float64, one bin at a time."""
    confidence, predicted = probs.max(dim=1)
    where = torch.bucketize(confidence, torch.linspace(0, 1, bins + 1), right=True) - 1
    correct = (predicted == labels).double()
    return sum(abs(float(correct[where == b].sum() - confidence[where == b].double().sum()))
               for b in range(bins + 1)) / len(labels)


@pytest.mark.parametrize("seed", range(7))
def test_ece_matches_torchmetrics_on_random_probabilities(seed: int) -> None:
    """Equal to torchmetrics within 1e-6, from two classes to 100, 50 items to 10,000, one bin to 15; and
    within float32's rounding of the bins' sums of the ECE summed in float64."""
    generator = torch.Generator().manual_seed(seed)
    classes = [2, 3, 10, 10, 7, 100, 10][seed]
    n = [50, 400, 3000, 10_000, 5000, 2000, 300][seed]
    sharpness = [0.5, 2.0, 5.0, 30.0, 1.0, 8.0, 3.0][seed]  # 30: many confidences of exactly 1.0 in float32
    bins = [15, 15, 15, 15, 7, 15, 1][seed]
    logits = torch.randn(n, classes, generator=generator) * sharpness
    labels = torch.randint(0, classes, (n,), generator=generator)
    probs = torch.softmax(logits, dim=1)
    if seed == 3:
        assert int((probs.max(dim=1).values == 1.0).sum()) > 1000  # the extra bin of exactly 1.0 is used
    assert_agrees(probs, labels, bins)
    assert mine(probs, labels, bins)[0] == pytest.approx(exact(probs, labels, bins), abs=1e-5)


def test_ece_matches_torchmetrics_on_bin_edges_and_an_unpredicted_class() -> None:
    """Confidences on the edges — 0.2, 0.4, 0.6, 1.0, and every edge of torchmetrics' float32 linspace, which
    are not always the nearest float32 (its 3/15 is 0.20000002, so 0.2 itself falls in the bin below) — and one
    float32 step below them; class 4 is never predicted and class 3 never the label."""
    edges = bin_edges(15)
    assert edges.dtype == np.float32 and edges[-1] == 1.0
    assert edges[3] > np.float32(0.2) and edges[6] > np.float32(0.4) and edges[9] < np.float32(0.6)
    assert torch.bucketize(torch.tensor([0.2, float(edges[3])]), torch.from_numpy(edges), right=True).tolist() == [3, 4]
    rows = [[0.4, 0.2, 0.2, 0.1, 0.1], [1.0, 0.0, 0.0, 0.0, 0.0], [0.6, 0.2, 0.2, 0.0, 0.0],
            [0.2, 0.6, 0.0, 0.2, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0], [0.2, 0.4, 0.2, 0.2, 0.0]]
    for edge in edges[1:]:
        for value in (edge, np.nextafter(edge, np.float32(0))):
            rest = (1 - float(value)) / 4
            rows.append([float(value), rest, rest, rest, rest] if value >= 0.5 else [rest, float(value), 0, 0, 0])
    probs = torch.tensor(rows, dtype=torch.float32)
    labels = torch.tensor([i % 3 if i % 4 else 4 for i in range(len(rows))])  # labels 0, 1, 2, 4: no 3
    assert int((labels == 3).sum()) == 0 and int((probs.argmax(dim=1) == 4).sum()) == 0
    assert_agrees(probs, labels)
    for bins in (5, 10, 20):  # 0.2 and 1.0 are edges of these too
        assert_agrees(probs, labels, bins)


# -- the stages on a tiny trained model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    """An MLP trained for a few seconds on the sample digits, and 500 evaluation images: right often, wrong
    often enough for confused pairs."""
    full = load_data(DataConfig(dataset="mnist-sample"))
    data = replace(full, eval_x=full.eval_x[:500], eval_y=full.eval_y[:500])
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mlp", hidden=[32]), data.input_shape, 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = data.normalize(data.train_x[:1500]), data.train_y[:1500]
    for _ in range(3):
        for start in range(0, len(x), 100):
            optimizer.zero_grad()
            F.cross_entropy(model(x[start:start + 100]), y[start:start + 100]).backward()
            optimizer.step()
    return data, model.eval()


@pytest.fixture(scope="module")
def ran(trained, tmp_path_factory):
    """Both stages run once at epoch 3 (default options), the run closed so that every figure is drawn."""
    data, model = trained
    folder = tmp_path_factory.mktemp("diagnostics")
    run = Run(folder)
    evaluation = Evaluation(model=model, data=data, probe=select_probe(data, 1, 0), epoch=3, final=True)
    notices: list[str] = []
    ctx = StageContext(evaluation=evaluation, sink=run.sink, folder="epoch_003", notice=notices.append)
    stages = [STAGES["calibration"](), STAGES["top_losses"]()]
    for stage in stages:
        stage.prepare(model, data)
    results = run_stages(stages, ctx, strict=True)
    run.close()
    assert not notices and not results.failed
    return folder, results


def test_calibration_stage_records_torchmetrics_ece_on_the_models_probabilities(trained, ran) -> None:
    data, model = trained
    folder, results = ran
    with torch.no_grad():
        probs = torch.softmax(model(data.normalize(data.eval_x)), dim=1)
    overall, per_class = theirs(probs, data.eval_y)
    record = interp.load_record(folder, "calibration", 3)
    assert abs(record.numbers["calibration/ece"] - overall) <= TOL
    assert results.numbers["calibration/ece"] == record.numbers["calibration/ece"]
    np.testing.assert_allclose(record.data["class_ece"], per_class, rtol=0, atol=TOL)
    assert record.numbers["calibration/max_class_ece"] == pytest.approx(per_class.max(), abs=TOL)
    assert record.numbers["calibration/mean_class_ece"] == pytest.approx(per_class.mean(), abs=TOL)
    bins = record.data["bins"]  # 15 bins and torchmetrics' extra one for confidences of exactly 1.0
    assert len(bins["count"]) == 16 and bins["count"].sum() == len(data.eval_y)
    confidence, predicted = probs.max(dim=1)
    first = (confidence < float(bin_edges(15)[1])).numpy()
    assert bins["count"][0] == first.sum()
    correct = (predicted == data.eval_y).numpy()
    assert bins["count"] @ bins["accuracy"] == pytest.approx(correct.sum(), abs=1e-3)  # means in float32
    summary = record.summary
    assert [row[0] for row in summary["rows"]] == data.classes and summary["terminal"] is False
    assert summary["columns"][1] == "class ECE"


def test_top_losses_are_the_topk_of_cross_entropy_with_maps_for_the_predicted_class(trained, ran) -> None:
    from interp.attribution import attribute, to_map

    data, model = trained
    folder, results = ran
    x = data.normalize(data.eval_x)
    with torch.no_grad():
        logits = model(x)
    losses = F.cross_entropy(logits, data.eval_y, reduction="none")
    expected_loss, expected_index = losses.topk(16)
    record = interp.load_record(folder, "top_losses", 3)
    kept = record.data["top_losses"]
    np.testing.assert_array_equal(kept["index"], expected_index.numpy())
    np.testing.assert_allclose(kept["score"], expected_loss.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(kept["label"], data.eval_y[expected_index].numpy())
    predicted = logits.argmax(dim=1)[expected_index]
    np.testing.assert_array_equal(kept["predicted"], predicted.numpy())
    probs = torch.softmax(logits, dim=1)[expected_index]
    np.testing.assert_allclose(kept["p_pred"], probs.gather(1, predicted[:, None])[:, 0].numpy(), atol=1e-6)
    assert results.numbers["top_losses/mean_top_loss"] == pytest.approx(float(expected_loss.mean()), rel=1e-5)

    fields = record.figures["top_losses"]["fields"]
    images = x[expected_index]
    by_hand = to_map(attribute("integrated_gradients", model, images, predicted, baseline=data.black(images),
                               steps=20), signed=False)
    assert fields["maps"].shape == (16, 28, 28) and fields["maps"].dtype == np.float32
    np.testing.assert_allclose(fields["maps"], by_hand.numpy(), rtol=1e-5, atol=1e-6)
    # for the predicted class, not the given one: the maps differ where the model is wrong
    wrong = (predicted != data.eval_y[expected_index]).nonzero()[:, 0]
    assert len(wrong) > 0
    given = to_map(attribute("integrated_gradients", model, images[wrong], data.eval_y[expected_index][wrong],
                             baseline=data.black(images[wrong]), steps=20), signed=False)
    assert not np.allclose(fields["maps"][wrong.numpy()], given.numpy(), atol=1e-4)
    assert fields["pixels"].dtype == np.uint8  # the images as drawn, [0, 1] × 255: here the digits' own bytes
    np.testing.assert_array_equal(fields["pixels"], data.eval_x[expected_index].numpy())


def test_confused_pairs_are_the_largest_off_diagonal_cells_of_the_confusion_matrix(trained, ran) -> None:
    data, model = trained
    folder, _ = ran
    with torch.no_grad():
        probs = torch.softmax(model(data.normalize(data.eval_x)), dim=1)
    y_true, y_pred = data.eval_y.numpy(), probs.argmax(dim=1).numpy()
    matrix = confusion_matrix(y_true, y_pred, labels=list(range(10)))
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    record = interp.load_record(folder, "top_losses", 3)
    pairs = record.data["confused_pairs"]
    true, pred, count = pairs["true"], pairs["predicted"], pairs["count"]
    assert len(count) == 6 and (true != pred).all()
    np.testing.assert_array_equal(count, off[true, pred])
    np.testing.assert_array_equal(count, np.sort(off.ravel())[::-1][:6])  # the six largest, most first
    for (t, p, examples) in zip(true, pred, pairs["examples"], strict=True):
        mistakes = np.nonzero((y_true == t) & (y_pred == p))[0]
        shown = examples[examples >= 0]
        assert len(shown) == min(4, len(mistakes)) and set(shown) <= set(mistakes)
        chances = probs[shown, p].numpy()
        assert (np.diff(chances) <= 0).all()  # most confident first
        others = np.setdiff1d(mistakes, shown)
        assert len(others) == 0 or probs[others, p].max() <= chances.min()
    summary = record.summary
    assert summary["rows"][0][:3] == [data.classes[true[0]], data.classes[pred[0]], int(count[0])]


@pytest.mark.parametrize("seed", range(4))
def test_confused_pairs_match_scikit_learn_on_random_labels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    classes = int(rng.integers(2, 9))
    y_true = rng.integers(0, classes, 200)
    y_pred = np.where(rng.random(200) < 0.5, y_true, rng.integers(0, classes, 200))
    true, pred, count = confused_pairs(y_true, y_pred, classes, top=classes * classes)
    off = confusion_matrix(y_true, y_pred, labels=list(range(classes)))
    np.fill_diagonal(off, 0)
    assert len(count) == int((off > 0).sum())  # every cell with an error, none without
    np.testing.assert_array_equal(count, off[true, pred])
    assert count.sum() == int((y_true != y_pred).sum())
    order = list(zip(-count, true, pred, strict=True))
    assert order == sorted(order)  # most errors first, ties by true then predicted class
    top3 = confused_pairs(y_true, y_pred, classes, top=3)
    for got, full in zip(top3, (true, pred, count), strict=True):
        np.testing.assert_array_equal(got, full[:3])


def test_the_records_draw_the_same_figures_again(ran) -> None:
    folder, _ = ran
    names = {"calibration": ["reliability"], "top_losses": ["top_losses", "confused_pairs"]}
    for stage, figures in names.items():
        record = interp.load_record(folder, stage, 3)
        assert sorted(record.figures) == sorted(figures)
        for figure in figures:
            png = folder / "epoch_003" / stage / f"{figure}.png"
            assert png.read_bytes() == draw(record, figure), f"{stage}/{figure}"


def test_on_by_default_right_after_confusion_and_options_are_checked(trained) -> None:
    data, model = trained
    defaults = default_stage_specs()
    assert defaults[:3] == ["confusion", "calibration", "top_losses"]
    assert STAGES["calibration"].needs == frozenset({"classes"})
    assert STAGES["top_losses"].needs == frozenset({"images", "classes"})
    with pytest.raises(UserError, match="unknown method 'nope'"):
        STAGES["top_losses"](STAGES["top_losses"].Options(method="nope")).prepare(model, data)
    with pytest.raises(UserError, match="gradcam: needs a convolutional layer"):
        STAGES["top_losses"](STAGES["top_losses"].Options(method="gradcam")).prepare(model, data)
    from interp.stages import check_stages

    with pytest.raises(UserError, match="bins"):
        check_stages([{"calibration": {"bins": 0}}])
    with pytest.raises(UserError, match="unknown option"):
        check_stages([{"top_losses": {"top": 3}}])


def test_top_losses_with_another_method_and_fewer_images(trained, tmp_path: Path) -> None:
    """A method by name with its options, k and pairs: the maps are that method's for the predicted class."""
    from interp.attribution import attribute, to_map

    data, model = trained
    run = Run(tmp_path)
    evaluation = Evaluation(model=model, data=data, probe=select_probe(data, 1, 0), epoch=1, final=False)
    ctx = StageContext(evaluation=evaluation, sink=run.sink, folder="epoch_001")
    stage = STAGES["top_losses"](STAGES["top_losses"].Options(k=3, method="saliency", pairs=2, examples=2))
    stage.prepare(model, data)
    run_stages([stage], ctx, strict=True)
    run.close()
    record = interp.load_record(tmp_path, "top_losses", 1)
    kept = record.data["top_losses"]
    assert len(kept["index"]) == 3
    images = data.normalize(data.eval_x[torch.from_numpy(kept["index"])])
    by_hand = to_map(attribute("saliency", model, images, torch.from_numpy(kept["predicted"])), signed=False)
    np.testing.assert_allclose(record.figures["top_losses"]["fields"]["maps"], by_hand.numpy(), atol=1e-6)
    assert record.data["confused_pairs"]["examples"].shape == (2, 2)
    assert (tmp_path / "epoch_001" / "top_losses" / "confused_pairs.png").is_file()
