"""Dataset exemplars: the evaluation images that make a unit fire most, and the crops a conv channel saw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from interp.analysis.evaluation import evaluate
from interp.analysis.records import read_record
from interp.analysis.runner import StageContext, run_stages
from interp.config import load_config
from interp.data import load_data, select_probe
from interp.models import build_model
from interp.run import Run
from interp.stages.exemplars import ExemplarsOptions, ExemplarsStage


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    return load_data(load_config(None, ["train.device=cpu", "data.train_limit=200"]).data, 0)


def run_exemplars(model: nn.Module, data, tmp_path: Path, **options) -> tuple[list, Path]:  # type: ignore[no-untyped-def]
    stage = ExemplarsStage(ExemplarsOptions(**options))
    stage.prepare(model, data)
    run, _ = Run.create(tmp_path, "run")
    run.drawing_worker = False
    ctx = StageContext(evaluation=evaluate(model.eval(), data, select_probe(data, 1, 0), 1), sink=run.sink,
                       folder="epoch_001")
    results = run_stages([stage], ctx)
    run.close()
    assert not results.failed, results.failed
    return read_record(run.path / "epoch_001" / "exemplars" / "record.npz").data["exemplars"], run.path


def brute_force(model: nn.Module, x: torch.Tensor, layer: nn.Module, unit: int) -> np.ndarray:
    """Every image alone through the model: its unit's largest response."""
    out: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, o: out.append(o.detach()[0, unit].max()))
    with torch.no_grad():
        for image in x:
            model(image[None])
    handle.remove()
    return torch.stack(out).numpy()


@pytest.mark.parametrize("arch", ["mlp", "allconv"])
def test_exemplars_equal_a_brute_force_ranking(arch: str, data, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(load_config(None, [f"model.arch={arch}", "model.width=8"]).model, data.input_shape, 10)
    panels, _ = run_exemplars(model, data, tmp_path, units=2, top=5)
    assert len(panels) == 3 or arch == "mlp"
    x = data.normalize(data.eval_x)
    for panel in panels:
        layer = dict(model.named_modules())[panel["layer"]]
        for i, unit in enumerate(panel["units"]):
            responses = brute_force(model, x, layer, unit)
            order = np.argsort(-responses, kind="stable")[:5]
            np.testing.assert_allclose(panel["value"][i], responses[order], rtol=1e-4, atol=1e-5)
            # the same images, unless two responses tie to float precision
            same = panel["index"][i] == order
            assert same.all() or np.allclose(responses[panel["index"][i]], responses[order], rtol=1e-4, atol=1e-5)
        if arch == "mlp":
            assert panel["boxes"] is None
        else:
            assert np.asarray(panel["boxes"]).shape == (len(panel["units"]), 5, 4)


def test_a_vertical_edge_channel_has_vertical_edges_in_its_crops(data, tmp_path: Path) -> None:
    """A conv channel set by hand to [-1, 0, 1] rows: its exemplars' crops (its 3×3 receptive field) are dark on
    the left and bright on the right — their horizontal changes far above their vertical ones."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 26 * 26, 10))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.zero_()
        model[0].weight[0, 0] = torch.tensor([[-1.0, 0.0, 1.0]] * 3)
        model[0].weight[1, 0] = torch.tensor([[-1.0, -1.0, -1.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    [panel], run = run_exemplars(model, data, tmp_path, select={"0": [0, 1]}, top=8)
    assert panel["units"] == [0, 1]
    boxes = np.asarray(panel["boxes"])
    assert ((boxes[..., 2] - boxes[..., 0]) == 3).all() and ((boxes[..., 3] - boxes[..., 1]) == 3).all()
    x = data.normalize(data.eval_x)[:, 0].numpy()
    for i, (horizontal_edge_wanted) in enumerate((False, True)):
        across = along = 0.0
        for j, image in enumerate(panel["index"][i]):
            top, left, bottom, right = boxes[i, j]
            crop = x[image, top:bottom, left:right]
            across += np.abs(np.diff(crop, axis=1)).sum()  # left to right: a vertical edge
            along += np.abs(np.diff(crop, axis=0)).sum()  # top to bottom: a horizontal edge
        if horizontal_edge_wanted:
            assert along > 3 * across
        else:
            assert across > 3 * along


def test_exemplars_read_back_from_the_run(data, tmp_path: Path) -> None:
    """interp.exemplars: a unit's exemplars from the record alone — the indices, the images' classes and
    pixels, and the crops its strongest response saw."""
    import interp
    from interp.errors import UserError
    from interp.stages.top_losses import pixels_of

    torch.manual_seed(0)
    model = build_model(load_config(None, ["model.arch=allconv", "model.width=8"]).model, data.input_shape, 10)
    panels, run = run_exemplars(model, data, tmp_path, units=2, top=5)
    every = interp.exemplars(run)
    assert [(e.layer, e.unit) for e in every] == [(p["layer"], u) for p in panels for u in p["units"]]
    layer, unit = panels[0]["layer"], panels[0]["units"][1]
    [chosen] = interp.exemplars(run, layer, unit)
    assert chosen.epoch == 1 and chosen.index.tolist() == panels[0]["index"][1].tolist()
    assert chosen.labels == [data.classes[int(data.eval_y[i])] for i in chosen.index]
    np.testing.assert_array_equal(chosen.pixels, pixels_of(data, torch.as_tensor(chosen.index)).numpy())
    for crop, image, (top, left, bottom, right) in zip(chosen.crops, chosen.pixels, chosen.boxes, strict=True):
        assert crop.shape == (1, bottom - top, right - left) and bottom - top < 28
        np.testing.assert_array_equal(crop, image[:, top:bottom, left:right])
    with pytest.raises(UserError, match="no exemplars of features.nothing"):
        interp.exemplars(run, "features.nothing")
    with pytest.raises(UserError, match="no exemplars record"):
        interp.exemplars(tmp_path)


# -- feature visualisation ----------------------------------------------------------------------------------


def edge_model() -> nn.Module:
    """Channel 0: a vertical-edge filter ([-1, 0, 1] rows); channel 1: the same turned, a horizontal one."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 26 * 26, 10))
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.zero_()
        model[0].weight[0, 0] = torch.tensor([[-1.0, 0.0, 1.0]] * 3)
        model[0].weight[1, 0] = torch.tensor([[-1.0, 0.0, 1.0]] * 3).T
    return model


def test_a_vertical_edge_channel_is_visualised_with_vertical_structure() -> None:
    """Its optimised input's spectral energy along the horizontal frequency axis is at least 5× that along the
    vertical one; the horizontal-edge channel's the other way round."""
    from interp import visualize

    model = edge_model()
    images = visualize(model, "0", [0, 1], input_shape=(1, 28, 28), mean=(0.1307,), std=(0.3081,))
    assert images.shape == (2, 1, 28, 28)
    energy = []
    for image in images[:, 0]:
        spectrum = torch.fft.fft2(image - image.mean()).abs() ** 2
        energy.append((float(spectrum[0, 1:].sum()), float(spectrum[1:, 0].sum())))  # (horizontal, vertical)
    assert energy[0][0] >= 5 * energy[0][1]
    assert energy[1][1] >= 5 * energy[1][0]


def test_a_colour_unit_is_visualised_in_its_colour_and_images_start_at_the_data_mean() -> None:
    """A CIFAR-shaped input: a channel that sums red minus green and blue gets a red image through the
    decorrelated colour basis, one that prefers blue a blue one; before any step the image is centred on the
    data's mean pixel."""
    from interp import visualize

    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 32 * 32, 10))
    with torch.no_grad():
        model[0].bias.zero_()
        model[0].weight.copy_(torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]]).view(2, 3, 1, 1))
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    images = visualize(model, "0", [0, 1], input_shape=(3, 32, 32), mean=mean, std=std, steps=64)
    pixels = images * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    red, green, blue = pixels[0].mean(dim=(1, 2)).tolist()
    assert red > 0.5 and green < 0.05 and blue < 0.05
    red, green, blue = pixels[1].mean(dim=(1, 2)).tolist()
    assert blue > 0.5 and red < 0.05 and green < 0.05
    # before any step: low-frequency noise around the data's mean pixel (the sigmoid's centre)
    start = visualize(model, target=[1] * 16, input_shape=(3, 32, 32), mean=mean, std=std, steps=0)
    start = start * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    assert start.mean(dim=(0, 2, 3)).tolist() == pytest.approx(mean, abs=0.05)
    digit = visualize(edge_model(), target=[1] * 16, input_shape=(1, 28, 28), mean=(0.1307,), std=(0.3081,),
                      steps=0) * 0.3081 + 0.1307
    assert float(digit.median()) == pytest.approx(0.1307, abs=0.02)  # a digit's image starts dark, not grey


def test_visualize_is_deterministic_and_leaves_the_model_alone() -> None:
    from interp import visualize

    model = edge_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = visualize(model, target=[3, 7], input_shape=(1, 28, 28), steps=8, seed=5)
    b = visualize(model, target=[3, 7], input_shape=(1, 28, 28), steps=8, seed=5)
    assert torch.equal(a, b) and not torch.equal(a, visualize(model, target=[3, 7], input_shape=(1, 28, 28),
                                                               steps=8, seed=6))
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="not both"):
        visualize(model, "0", [0], target=1, input_shape=(1, 28, 28))


def test_the_stage_runs_at_the_final_analysis_and_compares_a_first_layer_unit_with_its_weights(data, tmp_path: Path,
                                                                                                ) -> None:
    from interp.stages.feature_visualization import FeatureVisualizationOptions, FeatureVisualizationStage

    torch.manual_seed(0)
    model = build_model(load_config(None, []).model, data.input_shape, 10).eval()
    stage = FeatureVisualizationStage(FeatureVisualizationOptions(steps=16, units=2))
    stage.prepare(model, data)
    run, _ = Run.create(tmp_path, "run")
    run.drawing_worker = False
    probe = select_probe(data, 1, 0)
    for epoch, final in ((1, False), (2, True)):
        ctx = StageContext(evaluation=evaluate(model, data, probe, epoch, final=final), sink=run.sink,
                           folder=f"epoch_{epoch:03d}")
        results = run_stages([stage], ctx)
        assert not results.failed
    run.close()
    early = read_record(run.path / "epoch_001" / "feature_visualization" / "record.npz")
    assert early.figures == {} and not early.data  # not final: nothing drawn
    record = read_record(run.path / "epoch_002" / "feature_visualization" / "record.npz")
    assert set(record.figures) == {"units", "classes"}
    hidden = record.data["units"][0]
    assert hidden["layer"] == "features.fc1" and len(hidden["weight_correlation"]) == 2
    assert len(record.data["class_probability"]) == 10
    assert record.numbers["feature_visualization/class_probability"] == pytest.approx(
        float(np.mean(record.data["class_probability"])))
