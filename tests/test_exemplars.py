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


def run_exemplars(model: nn.Module, data, tmp_path: Path, **options) -> dict:  # type: ignore[no-untyped-def]
    stage = ExemplarsStage(ExemplarsOptions(**options))
    stage.prepare(model, data)
    run, _ = Run.create(tmp_path, "run")
    run.drawing_worker = False
    ctx = StageContext(evaluation=evaluate(model.eval(), data, select_probe(data, 1, 0), 1), sink=run.sink,
                       folder="epoch_001")
    results = run_stages([stage], ctx)
    run.close()
    assert not results.failed, results.failed
    return read_record(run.path / "epoch_001" / "exemplars" / "record.npz").data["exemplars"]


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
    panels = run_exemplars(model, data, tmp_path, units=2, top=5)
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
    [panel] = run_exemplars(model, data, tmp_path, select={"0": [0, 1]}, top=8)
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
