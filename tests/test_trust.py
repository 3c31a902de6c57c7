"""The trust numbers against known answers: linear models, a model that ignores its input, randomization."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor, nn
from typer.testing import CliRunner

from interp.analysis.evaluation import Evaluation
from interp.analysis.runner import StageContext, run_stages
from interp.attribution import integrated_gradients, saliency, target_logits, to_map
from interp.config import DataConfig, ModelConfig
from interp.data import load_data, select_probe
from interp.models import build_model
from interp.run import Run
from interp.stages import STAGES
from interp.trust import (
    auc,
    cascade_layers,
    perturbation_curves,
    random_rankings,
    randomization_cascade,
    rank_pixels,
    verdict,
)


@pytest.fixture(scope="module")
def data():
    full = load_data(DataConfig(dataset="mnist-sample"))
    return replace(full, eval_x=full.eval_x[:500], eval_y=full.eval_y[:500])


def fitted(model: nn.Module, data, steps: int = 150) -> nn.Module:
    """``model`` trained for a few Adam steps on 1,000 sample digits (seeded)."""
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = data.normalize(data.train_x[:1000]), data.train_y[:1000]
    for _ in range(steps):
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimiser.step()
    return model.eval()


@pytest.fixture(scope="module")
def linear(data) -> nn.Module:
    torch.manual_seed(0)
    return fitted(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), data)


class IgnoresInput(nn.Module):
    """Logits that do not depend on the image (the input is multiplied by zero, so gradients exist)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.3, 1.2, -0.5, 0.0, 0.7, 0.1, -1.0, 0.4, 0.2, 0.9]))

    def forward(self, x: Tensor) -> Tensor:
        return 0.0 * x.flatten(1).sum(1, keepdim=True) + self.bias


def contribution_map(model: nn.Module, x: Tensor, y: Tensor, baseline: Tensor) -> Tensor:
    """Exact per-pixel contribution of a linear model to the true-class logit: W[y] · (x − baseline)."""
    weight = model[1].weight.detach()[y].view_as(x)
    return (weight * (x - baseline)).sum(dim=1)


def test_integrated_gradients_are_exact_for_a_linear_model(linear, data) -> None:
    probe = select_probe(data, 1, 0)
    black = data.black(probe.x)
    attributions, delta = integrated_gradients(linear, probe.x, probe.y, black, steps=4)
    difference = target_logits(linear, probe.x, probe.y) - target_logits(linear, black, probe.y)
    assert delta.abs().max() < 1e-4 * difference.abs().max()  # completeness holds to float precision
    # and the map is the exact contribution W[y] · (x − x′)
    exact = contribution_map(linear, probe.x, probe.y, black)
    assert torch.allclose(to_map(attributions, signed=True), exact, atol=1e-5)


def test_perturbation_curves_start_at_the_image_and_end_at_the_baseline(linear, data) -> None:
    probe = select_probe(data, 1, 0)
    black = data.black(probe.x)
    ranking = rank_pixels(contribution_map(linear, probe.x, probe.y, black))
    deletion = perturbation_curves(linear, probe.x, probe.y, black, ranking, steps=10, mode="deletion")
    insertion = perturbation_curves(linear, probe.x, probe.y, black, ranking, steps=10, mode="insertion")
    on_image = torch.softmax(linear(probe.x), 1).gather(1, probe.y[:, None])[:, 0]
    on_black = torch.softmax(linear(black), 1).gather(1, probe.y[:, None])[:, 0]
    assert deletion.shape == (10, 11)
    assert torch.allclose(deletion[:, 0], on_image, atol=1e-6) and torch.allclose(deletion[:, -1], on_black, atol=1e-6)
    assert torch.allclose(insertion[:, 0], on_black, atol=1e-6) and torch.allclose(insertion[:, -1], on_image, atol=1e-6)
    # the trapezoid rule over fractions 0, 0.1, … 1
    curve = deletion[0]
    assert float(auc(curve)) == pytest.approx(float((curve[:-1] + curve[1:]).sum() / 20), rel=1e-6)


def test_a_model_that_ignores_its_input_scores_exactly_like_random(data) -> None:
    model = IgnoresInput().eval()
    probe = select_probe(data, 1, 0)
    black = data.black(probe.x)
    generator = torch.Generator().manual_seed(0)
    maps = saliency(model, probe.x, probe.y).sum(dim=1) + probe.pixels[:, 0]  # any ranking at all
    ranked = rank_pixels(maps, generator)
    shuffled = random_rankings(len(probe.x), 784, generator)
    for mode in ("deletion", "insertion"):
        method = auc(perturbation_curves(model, probe.x, probe.y, black, ranked, mode=mode))
        random = auc(perturbation_curves(model, probe.x, probe.y, black, shuffled, mode=mode))
        assert torch.allclose(method, random, atol=1e-6)
        assert torch.allclose(method, torch.softmax(model.bias, 0)[probe.y].detach(), atol=1e-6)


def test_the_exact_contribution_map_of_a_linear_model_beats_random(linear, data) -> None:
    probe = select_probe(data, 1, 0)
    black = data.black(probe.x)
    generator = torch.Generator().manual_seed(0)
    ranking = rank_pixels(contribution_map(linear, probe.x, probe.y, black), generator)
    shuffled = random_rankings(len(probe.x), 784, generator)
    scores = {}
    for mode in ("deletion", "insertion"):
        scores[mode] = float(auc(perturbation_curves(linear, probe.x, probe.y, black, ranking, mode=mode)).mean())
        scores[f"random {mode}"] = float(auc(perturbation_curves(linear, probe.x, probe.y, black, shuffled,
                                                                 mode=mode)).mean())
    assert scores["deletion"] < scores["random deletion"] - 0.2, scores
    assert scores["insertion"] > scores["random insertion"] + 0.2, scores
    assert verdict(scores["deletion"], scores["insertion"], scores["random deletion"], scores["random insertion"],
                   None) == "trust"


def test_randomizing_all_layers_drives_the_saliency_correlation_down(data) -> None:
    torch.manual_seed(0)
    model = fitted(build_model(ModelConfig(arch="mlp", hidden=[64, 32]), data.input_shape, 10), data)
    probe = select_probe(data, 1, 0)
    trained = to_map(saliency(model, probe.x, probe.y), signed=False)
    cascade = randomization_cascade(model, lambda m: to_map(saliency(m, probe.x, probe.y), signed=False), trained)
    assert cascade.layers == cascade_layers(model) == ["head", "features.fc2.0", "features.fc1.0"]
    assert cascade.final < 0.2 < 0.5, cascade.correlations
    # the trained model itself is untouched by the check
    assert torch.equal(to_map(saliency(model, probe.x, probe.y), signed=False), trained)


def test_verdict_rules() -> None:
    assert verdict(0.2, 0.8, 0.5, 0.5, 0.1) == "trust"
    assert verdict(0.5, 0.8, 0.5, 0.5, None) == "doubt: del. ≥ random"
    assert verdict(0.2, 0.4, 0.5, 0.5, math.nan) == "doubt: ins. ≤ random"
    assert verdict(0.2, 0.8, 0.5, 0.5, 0.9) == "doubt: ignores weights"


def test_trust_stage_records_numbers_figures_and_a_table(data, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="allconv", width=4), data.input_shape, 10).eval()
    run = Run(tmp_path)
    evaluation = Evaluation(model=model, data=data, probe=select_probe(data, 1, 0), epoch=3, final=True)
    ctx = StageContext(evaluation=evaluation, sink=run.sink, folder="epoch_003")
    stages = [STAGES["saliency"](STAGES["saliency"].Options(smoothgrad_samples=2)),
              STAGES["gradcam"](), STAGES["trust"](STAGES["trust"].Options(steps=8, images=4, ig_steps=8))]
    results = run_stages(stages, ctx)
    numbers = results.numbers
    run.close()
    methods = ["saliency", "smoothgrad", "gradcam"]  # the maps the stages before it drew
    for method in [*methods, "random"]:
        for mode in ("deletion", "insertion"):
            assert 0.0 <= numbers[f"trust/{method}/{mode}_auc"] <= 1.0
    for method in methods:
        assert -1.0 <= numbers[f"trust/{method}/randomization_correlation"] <= 1.0 or \
            math.isnan(numbers[f"trust/{method}/randomization_correlation"])
    table = results.summaries["trust"]
    assert [row[0] for row in table.rows] == methods
    written = json.loads((tmp_path / "epoch_003" / "trust" / "summary.json").read_text())
    assert written["rows"] == [[None if isinstance(v, float) and math.isnan(v) else v for v in row]
                               for row in table.rows] and written["epoch"] == 3
    saved = json.loads((tmp_path / "epoch_003" / "trust" / "trust.json").read_text())
    assert set(saved["methods"]) == set(methods)
    assert len(saved["methods"]["gradcam"]["cascade"]) == len(cascade_layers(model))
    assert len(saved["curves"]["random"]["deletion"]) == 9
    logged = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0})
    logged.Reload()
    assert {"trust/deletion_insertion", "trust/randomization", "trust/randomization_maps"} <= set(
        logged.Tags()["images"])
    assert logged.Scalars("trust/saliency/deletion_auc")[0].value == pytest.approx(
        numbers["trust/saliency/deletion_auc"], rel=1e-6)


def test_training_prints_the_trust_table_and_logs_every_epoch(tmp_path: Path) -> None:
    from interp.cli import app

    result = CliRunner().invoke(app, [
        "train", "--save-dir", str(tmp_path), "--set", "train.epochs=2", "--set", "data.train_limit=1000",
        "--set", "analysis.stages=[saliency, {integrated_gradients: {steps: 16}}, {trust: {steps: 8}}]"])
    assert result.exit_code == 0, result.output
    assert "Can you trust the maps?" in result.output
    lines = result.output.splitlines()
    rule = next(i for i, line in enumerate(lines) if "───" in line)
    rows = [line.split() for line in lines[rule + 1:rule + 4]]
    assert [row[0] for row in rows] == ["saliency", "smoothgrad", "integrated_gradients"]
    assert all(row[-1] in ("trust", "doubt") and len(row) == 7 for row in rows), rows
    metrics = [json.loads(line) for line in (tmp_path / "mnist-mlp" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [0, 1, 2]
    for row in metrics:
        assert "trust/integrated_gradients/deletion_auc" in row and "trust/random/insertion_auc" in row
        # the randomization check costs the most, so it runs at the final epoch only
        assert ("trust/saliency/randomization_correlation" in row) == (row["epoch"] == 2)


def test_smoothgrad_noise_is_the_same_for_trained_and_randomized_maps(data) -> None:
    """Only the weights may differ between the maps compared: re-initializing a layer the forward pass
    never uses must leave a noisy method's map exactly as it was (ρ = 1)."""
    from interp.attribution import smoothgrad

    class WithSpare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(784, 10)
            self.unused = nn.Linear(3, 3)  # registered, re-initialized by the cascade, never called

        def forward(self, x: Tensor) -> Tensor:
            return self.linear(x.flatten(1))

    torch.manual_seed(0)
    model = WithSpare()
    probe = select_probe(data, 1, 0)
    cascade = randomization_cascade(model, lambda m: smoothgrad(m, probe.x, probe.y, samples=4).sum(dim=1),
                                    layers=["unused", "linear"])
    assert cascade.correlations[0] == pytest.approx(1.0)
    assert torch.equal(cascade.maps[0], cascade.trained)
    assert cascade.correlations[1] < 0.5  # the real layer, once random, changes the map


def test_the_torch_free_trust_options_match_the_methods_and_rules() -> None:
    """The trust stage names its methods and cut-off without importing torch; they must be the real ones."""
    from interp import trust as rules
    from interp.attribution import METHODS
    from interp.stages import trust as stage

    assert tuple(METHODS) == stage.METHOD_NAMES
    assert stage.CORRELATION_LIMIT == rules.CORRELATION_LIMIT
