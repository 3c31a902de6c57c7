"""The trust numbers against known answers: linear models, a model that ignores its input, an edge map
passed as a method, ROAD's imputation, bootstrap intervals, SSIM, the patches task, randomization."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import Tensor, nn
from typer.testing import CliRunner

from interp.analysis.evaluation import Evaluation
from interp.analysis.runner import StageContext, run_stages
from interp.attribution import (
    blurred,
    expected_gradients,
    integrated_gradients,
    saliency,
    target_logits,
    to_map,
)
from interp.config import DataConfig, ModelConfig
from interp.data import load_data, select_probe
from interp.models import build_model
from interp.run import Run
from interp.stages import STAGES
from interp.trust import (
    NEIGHBOURS,
    Check,
    auc,
    bootstrap_interval,
    cascade_layers,
    mass_inside,
    perturbation_curves,
    random_rankings,
    randomization_cascade,
    rank_pixels,
    road_curves,
    road_impute,
    shuffled_label_copy,
    sobel_map,
    spearman,
    ssim,
    ssim_map,
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


def scipy_sobel(pixels: Tensor) -> Tensor:
    """The Sobel magnitude of single-channel images, image by image, straight from SciPy."""
    maps = [np.hypot(ndimage.sobel(image[0], axis=0), ndimage.sobel(image[0], axis=1))
            for image in pixels.double().numpy()]
    return torch.from_numpy(np.stack(maps)).float()


def trust_context(model: nn.Module, data, tmp_path: Path, epoch: int = 3, final: bool = True,
                  per_class: int = 1, methods: tuple[str, ...] = ("saliency",)) -> tuple[StageContext, Run]:
    run = Run(tmp_path)
    evaluation = Evaluation(model=model, data=data, probe=select_probe(data, per_class, 0), epoch=epoch, final=final)
    return StageContext(evaluation=evaluation, sink=run.sink, folder=f"epoch_{epoch:03d}", methods=methods), run


# -- the metrics ---------------------------------------------------------------------------------
def test_integrated_gradients_are_exact_for_a_linear_model(linear, data) -> None:
    probe = select_probe(data, 1, 0)
    black = data.black(probe.x)
    attributions, delta = integrated_gradients(linear, probe.x, probe.y, black, steps=4)
    difference = target_logits(linear, probe.x, probe.y) - target_logits(linear, black, probe.y)
    assert delta.abs().max() < 1e-4 * difference.abs().max()  # completeness holds to float precision
    # and the map is the exact contribution W[y] · (x − x′), from black and from the blurred image alike
    exact = contribution_map(linear, probe.x, probe.y, black)
    assert torch.allclose(to_map(attributions, signed=True), exact, atol=1e-5)
    blur = blurred(probe.x)
    from_blur, _ = integrated_gradients(linear, probe.x, probe.y, blur, steps=4)
    assert torch.allclose(to_map(from_blur, signed=True), contribution_map(linear, probe.x, probe.y, blur), atol=1e-5)
    # expected gradients whose only reference is black: the same map, whatever the random path points
    torch.manual_seed(0)
    expected = expected_gradients(linear, probe.x, probe.y, black, black, references=1, samples=8)
    assert torch.allclose(to_map(expected, signed=True), exact, atol=1e-5)


def test_the_blurred_baseline_is_a_gaussian_blur(data) -> None:
    """Against a blur written out here: σ = 0.1 × 28 = 2.8 pixels, weights exp(−d²/2σ²) cut at ⌈3σ⌉ and
    summing to 1, edges mirrored without repeating the edge pixel (numpy's "reflect"), rows then columns."""
    probe = select_probe(data, 1, 0)
    pixels = probe.pixels[:3].double()
    spread = 2.8
    radius = math.ceil(3 * spread)
    weights = np.exp(-np.arange(-radius, radius + 1) ** 2 / (2 * spread ** 2))
    weights /= weights.sum()
    ours = blurred(pixels).numpy()
    assert ours.shape == (3, 1, 28, 28)
    for image, theirs in zip(pixels.numpy(), ours, strict=True):
        padded = np.pad(image[0], radius, mode="reflect")
        rows = np.stack([np.convolve(row, weights, mode="valid") for row in padded])  # (28 + 2r, 28)
        reference = np.stack([np.convolve(col, weights, mode="valid") for col in rows.T]).T
        assert np.allclose(theirs[0], reference, atol=1e-9)
    assert not np.allclose(ours[0, 0], pixels[0, 0].numpy(), atol=1e-3)  # it did blur
    flat = torch.full((1, 1, 28, 28), 0.37, dtype=torch.float64)
    assert torch.allclose(blurred(flat), flat)  # the weights add up to one


@pytest.mark.parametrize("which", ["black", "blur"])
def test_perturbation_curves_start_at_the_image_and_end_at_the_baseline(linear, data, which: str) -> None:
    probe = select_probe(data, 1, 0)
    baseline = data.black(probe.x) if which == "black" else blurred(probe.x)
    ranking = rank_pixels(contribution_map(linear, probe.x, probe.y, baseline))
    deletion = perturbation_curves(linear, probe.x, probe.y, baseline, ranking, steps=10, mode="deletion")
    insertion = perturbation_curves(linear, probe.x, probe.y, baseline, ranking, steps=10, mode="insertion")
    on_image = torch.softmax(linear(probe.x), 1).gather(1, probe.y[:, None])[:, 0]
    on_baseline = torch.softmax(linear(baseline), 1).gather(1, probe.y[:, None])[:, 0]
    assert deletion.shape == (10, 11)
    assert torch.allclose(deletion[:, 0], on_image, atol=1e-6) and torch.allclose(deletion[:, -1], on_baseline, atol=1e-6)
    assert torch.allclose(insertion[:, 0], on_baseline, atol=1e-6)
    assert torch.allclose(insertion[:, -1], on_image, atol=1e-6)
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
    for order in ("morf", "lerf"):
        road = road_curves(model, probe.x, probe.y, ranked, [20, 60], order, noise=0.01)
        assert torch.allclose(road, torch.softmax(model.bias, 0)[probe.y].detach()[:, None].expand(-1, 2), atol=1e-6)


def test_the_exact_contribution_map_of_a_linear_model_beats_random(linear, data) -> None:
    probe = select_probe(data, 1, 0)
    black = data.black(probe.x)
    generator = torch.Generator().manual_seed(0)
    ranking = rank_pixels(contribution_map(linear, probe.x, probe.y, black), generator)
    shuffled = random_rankings(len(probe.x), 784, generator)
    checks = []
    for mode in ("deletion", "insertion"):
        mine = auc(perturbation_curves(linear, probe.x, probe.y, black, ranking, mode=mode)).numpy()
        random = auc(perturbation_curves(linear, probe.x, probe.y, black, shuffled, mode=mode)).numpy()
        gap = mine - random
        assert (gap.mean() < -0.2) if mode == "deletion" else (gap.mean() > 0.2), gap
        checks.append(Check(mode, "worse", "unsure", float(gap.mean()), *bootstrap_interval(gap),
                            above=mode == "insertion"))
    assert verdict(checks) == "trust"


# -- the edge map ------------------------------------------------------------------------------------
def test_the_edge_reference_is_the_sobel_magnitude() -> None:
    """A vertical step from 0 to 1: the Sobel x-derivative is (1 + 2 + 1) × 1 = 4 on the two columns beside
    the step and 0 elsewhere; a colour image takes its strongest channel."""
    step = torch.zeros(1, 1, 6, 8)
    step[..., 4:] = 1.0
    edges = sobel_map(step)[0]
    assert torch.equal(edges[:, 3:5], torch.full((6, 2), 4.0))
    assert edges[:, :3].abs().max() == 0 and edges[:, 5:].abs().max() == 0
    colour = torch.cat([step * 0.5, torch.zeros_like(step), step], dim=1)
    assert torch.equal(sobel_map(colour)[0], edges)


def test_an_edge_map_passed_as_a_method_scores_exactly_like_the_edge_reference(linear, data) -> None:
    """The stage's scoring treats a method's map and the reference the same way: the same map, the same
    rankings (one tie-break stream), the same curves under every baseline and ROAD."""
    stage = STAGES["trust"](STAGES["trust"].Options(steps=8, road_percentages=[25, 75]))
    probe = select_probe(data, 1, 0)
    x, y = probe.x, probe.y
    maps = {"sobel_by_hand": scipy_sobel(data.denormalize(x)), "edges": sobel_map(data.denormalize(x))}
    baselines = {"black": data.black(x), "blur": blurred(x)}
    scores, curves = stage.perturb(linear, x, y, maps, baselines, road=True)
    assert set(scores["edges"]) == {"deletion/black", "insertion/black", "deletion/blur", "insertion/blur",
                                    "road_morf", "road_lerf"}
    for metric, values in scores["edges"].items():
        assert np.array_equal(scores["sobel_by_hand"][metric], values), metric
        assert not np.array_equal(scores["random"][metric], values), metric  # and it is not a random order


def test_the_exact_linear_contribution_beats_the_edge_map(linear, data) -> None:
    from interp.stages.trust import _faithfulness

    stage = STAGES["trust"](STAGES["trust"].Options(steps=10, road_percentages=[20, 50, 80]))
    probe = select_probe(data, 2, 0)
    x, y = probe.x, probe.y
    black = data.black(x)
    maps = {"exact": contribution_map(linear, x, y, black), "edges": sobel_map(data.denormalize(x))}
    scores, _ = stage.perturb(linear, x, y, maps, {"black": black, "blur": blurred(x)}, road=True)
    gap = _faithfulness(scores["exact"]) - _faithfulness(scores["edges"])
    low, high = bootstrap_interval(gap)
    check = Check("vs edges", "no better than edges", "≈ edges", float(gap.mean()), low, high, above=True)
    assert check.outcome == "pass" and low > 0.05, (gap.mean(), low, high)
    assert scores["exact"]["deletion/black"].mean() < scores["edges"]["deletion/black"].mean()


# -- ROAD ------------------------------------------------------------------------------------------
def test_road_fills_a_removed_pixel_from_its_neighbours() -> None:
    # a lone removed pixel: the weighted mean of its eight neighbours, 1/6 direct and 1/12 diagonal
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 1, 5, 5, generator=generator, dtype=torch.float64)
    removed = torch.zeros(1, 5, 5, dtype=torch.bool)
    removed[0, 2, 2] = True
    by_hand = sum(weight * float(image[0, 0, 2 + dy, 2 + dx]) for (dy, dx), weight in NEIGHBOURS)
    filled = road_impute(image, removed)
    assert float(filled[0, 0, 2, 2]) == pytest.approx(by_hand, abs=1e-12)
    assert torch.equal(filled[~removed[:, None].expand_as(filled)], image[~removed[:, None].expand_as(image)])
    # in a corner only three neighbours exist: their weights are renormalized (1/6, 1/6, 1/12 → /(5/12))
    removed = torch.zeros(1, 5, 5, dtype=torch.bool)
    removed[0, 0, 0] = True
    corner = (image[0, 0, 0, 1] / 6 + image[0, 0, 1, 0] / 6 + image[0, 0, 1, 1] / 12) / (5 / 12)
    assert float(road_impute(image, removed)[0, 0, 0, 0]) == pytest.approx(float(corner), abs=1e-12)


def test_road_imputes_constant_and_linear_images_exactly() -> None:
    """The weighted mean of symmetric neighbours is the centre's value for a linear image, so a removed
    interior block is filled exactly; a constant image is filled exactly wherever the holes are."""
    rows, cols = torch.meshgrid(torch.arange(12.0), torch.arange(10.0), indexing="ij")
    ramp = (2 * rows - 3 * cols + 1).double()[None, None]
    removed = torch.zeros(1, 12, 10, dtype=torch.bool)
    removed[0, 3:8, 2:6] = True  # interior: every removed pixel has all eight neighbours
    removed[0, 9, 8] = True
    assert torch.allclose(road_impute(ramp, removed), ramp, atol=1e-9)
    generator = torch.Generator().manual_seed(1)
    constant = torch.full((3, 2, 12, 10), 0.7, dtype=torch.float64)
    holes = torch.rand(3, 12, 10, generator=generator) < 0.8
    assert torch.allclose(road_impute(constant, holes), constant, atol=1e-9)


@pytest.mark.parametrize("solver", ["banded", "sparse"])
def test_road_imputation_matches_a_dense_solve_and_adds_seeded_noise(solver: str) -> None:
    """Random holes: both solvers against numpy's dense solve of the system written out by hand."""
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(3, 2, 7, 9, generator=generator, dtype=torch.float64)
    removed = torch.rand(3, 7, 9, generator=generator) < 0.6
    filled = road_impute(images, removed, solver=solver)  # type: ignore[arg-type]
    for i in range(3):
        holes = [(r, c) for r in range(7) for c in range(9) if removed[i, r, c]]
        index = {p: k for k, p in enumerate(holes)}
        system, right = np.zeros((len(holes), len(holes))), np.zeros((len(holes), 2))
        for k, (r, c) in enumerate(holes):
            for (dy, dx), weight in NEIGHBOURS:
                if 0 <= r + dy < 7 and 0 <= c + dx < 9:
                    system[k, k] += weight
                    if removed[i, r + dy, c + dx]:
                        system[k, index[(r + dy, c + dx)]] -= weight
                    else:
                        right[k] += weight * images[i, :, r + dy, c + dx].numpy()
        solution = np.linalg.solve(system, right)
        for k, (r, c) in enumerate(holes):
            assert np.allclose(filled[i, :, r, c].numpy(), solution[k], atol=1e-9)
    noisy = road_impute(images, removed, noise=0.05, seed=3, solver=solver)  # type: ignore[arg-type]
    assert torch.equal(noisy, road_impute(images, removed, noise=0.05, seed=3, solver=solver))  # type: ignore[arg-type]
    extra = (noisy - filled).permute(0, 2, 3, 1)[removed]
    assert float(extra.std()) == pytest.approx(0.05, rel=0.15)
    assert torch.equal(noisy.permute(0, 2, 3, 1)[~removed], images.permute(0, 2, 3, 1)[~removed])  # kept as is


# -- uncertainty, similarity, the verdict ---------------------------------------------------------------
def test_bootstrap_intervals_cover_the_sample_mean_and_match_the_normal_interval() -> None:
    rng = np.random.default_rng(0)
    for n in (10, 100):
        values = rng.normal(0.3, 0.2, size=n)
        low, high = bootstrap_interval(values, resamples=2000, seed=1)
        assert low < values.mean() < high
        half = 1.96 * values.std(ddof=1) / math.sqrt(n)  # the textbook interval, for comparison
        assert (high - low) / 2 == pytest.approx(half, rel=0.2)
    with_nan = np.array([0.1, math.nan, 0.3, 0.2])
    assert bootstrap_interval(with_nan, seed=4) == bootstrap_interval(with_nan[np.isfinite(with_nan)], seed=4)
    assert all(math.isnan(v) for v in bootstrap_interval([math.nan]))


def test_average_ranks_equal_scipy_rankdata() -> None:
    from scipy.stats import rankdata

    from interp.trust import average_ranks

    rng = np.random.default_rng(0)
    for _ in range(100):  # few distinct values: long runs of ties, a single value, one element
        values = rng.integers(0, int(rng.integers(1, 20)), size=int(rng.integers(1, 300))).astype(float)
        np.testing.assert_array_equal(average_ranks(values), rankdata(values))


def test_spearman_and_ssim_against_their_definitions() -> None:
    from scipy.stats import spearmanr

    generator = torch.Generator().manual_seed(0)
    a = torch.rand(28, 28, generator=generator).round(decimals=1)  # many ties
    b = a + 0.5 * torch.rand(28, 28, generator=generator)
    assert spearman(a, b) == pytest.approx(spearmanr(a.flatten(), b.flatten()).statistic, abs=1e-12)
    assert math.isnan(spearman(a, torch.zeros(28, 28)))

    x, y = a.double().numpy(), b.double().numpy() / 1.5
    assert ssim(x, x) == pytest.approx(1.0)
    # two constant images: only the luminance term is left, (2ab + C₁) / (a² + b² + C₁)
    c1 = 0.01**2
    assert ssim(np.full((28, 28), 0.2), np.full((28, 28), 0.6)) == pytest.approx(
        (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1))
    # the centre pixel, by hand: an 11×11 Gaussian window (σ = 1.5), weighted moments, Wang et al.'s formula
    offsets = np.arange(-5, 6)
    window = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * 1.5**2))
    window /= window.sum()
    px, py = x[9:20, 9:20], y[9:20, 9:20]
    mx, my = (window * px).sum(), (window * py).sum()
    vx, vy = (window * px**2).sum() - mx**2, (window * py**2).sum() - my**2
    cxy = (window * px * py).sum() - mx * my
    c2 = 0.03**2
    by_hand = (2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert ssim_map(x, y)[14, 14] == pytest.approx(by_hand, rel=1e-9)


def test_verdict_rules() -> None:
    clear = Check("del. vs random", "del. ≥ random", "del. ≈ random", -0.2, -0.25, -0.15)
    straddles = Check("ins. vs random", "ins. ≤ random", "ins. ≈ random", 0.01, -0.02, 0.04, above=True)
    wrong = Check("ρ", "ignores weights", "ρ ≈ 0.5", 0.9, 0.85, 0.95, limit=0.5)
    assert [c.outcome for c in (clear, straddles, wrong)] == ["pass", "uncertain", "fail"]
    assert verdict([clear]) == "trust"
    assert verdict([clear, straddles]) == "uncertain: ins. ≈ random"  # not "trust"
    assert verdict([clear, straddles, wrong]) == "doubt: ignores weights, ins. ≈ random"
    assert verdict([clear], ["incomplete (9%)"]) == "doubt: incomplete (9%)"
    # a point estimate on the right side whose interval reaches the limit is not enough either
    touching = Check("ρ", "ignores weights", "ρ ≈ 0.5", 0.45, 0.40, 0.50, limit=0.5)
    assert touching.outcome == "uncertain"
    assert Check("x", "f", "u", math.nan, math.nan, math.nan).outcome == "n/a"


def judged(scores: dict[str, dict[str, np.ndarray]], degenerate: int = 0) -> dict:
    """The stage's judgement of synthetic per-image scores for one method "m" (no cascade)."""
    from types import SimpleNamespace

    stage = STAGES["trust"]()
    n = len(scores["random"]["deletion/black"])
    broken = {name: torch.arange(n) < (degenerate if name == "m" else 0) for name in ("m", "edges")}
    for values in scores["m"].values():
        values[broken["m"].numpy()] = math.nan
    return stage.judge(SimpleNamespace(completeness={}), ["m"], scores, broken, {}, {}, {})


def test_a_method_no_better_than_edges_is_flagged_and_degenerate_maps_are_counted() -> None:
    rng = np.random.default_rng(0)
    n = 40

    def scores(deletion: float, insertion: float) -> dict[str, np.ndarray]:
        return {"deletion/black": deletion + 0.02 * rng.standard_normal(n),
                "insertion/black": insertion + 0.02 * rng.standard_normal(n)}

    edges = scores(0.2, 0.8)
    result = judged({"m": {k: v.copy() for k, v in edges.items()}, "edges": edges, "random": scores(0.5, 0.5)})
    assert result["m"]["verdict"] == "doubt: no better than edges"  # beats random, not the edge map
    result = judged({"m": scores(0.1, 0.9), "edges": edges, "random": scores(0.5, 0.5)}, degenerate=5)
    assert result["m"]["verdict"] == "trust" and result["m"]["degenerate"] == 5
    assert result["m"]["metrics"]["deletion/black"]["mean"] == pytest.approx(0.1, abs=0.02)  # 35 images
    # barely better than random: the interval straddles zero
    result = judged({"m": scores(0.495, 0.505), "edges": scores(0.6, 0.4), "random": scores(0.5, 0.5)})
    assert result["m"]["verdict"].startswith("uncertain: ")


# -- randomization ----------------------------------------------------------------------------------
def test_randomizing_all_layers_drives_the_saliency_correlation_down(data) -> None:
    torch.manual_seed(0)
    model = fitted(build_model(ModelConfig(arch="mlp", hidden=[64, 32]), data.input_shape, 10), data)
    probe = select_probe(data, 1, 0)
    trained = to_map(saliency(model, probe.x, probe.y), signed=False)
    cascade = randomization_cascade(model, lambda m: to_map(saliency(m, probe.x, probe.y), signed=False), trained)
    assert cascade.layers == cascade_layers(model) == ["head", "features.fc2", "features.fc1"]
    assert cascade.final < 0.2 < 0.5, cascade.correlations
    # the trained model itself is untouched by the check
    assert torch.equal(to_map(saliency(model, probe.x, probe.y), signed=False), trained)


def test_the_foreground_correlation_removes_the_shared_zeros_of_x_times_gradient(linear, data) -> None:
    """(x − black) ⊙ W is zero on the background whatever W is: over all pixels, two such maps from
    unrelated weights agree on every background pixel. On the foreground of a black-and-white image,
    where x − black is the same everywhere, only the weights are left to agree: ρ ≈ 0."""
    from interp.trust import foreground

    probe = select_probe(data, 1, 0)
    x = data.normalize((probe.pixels > 0.5).to(torch.uint8) * 255)  # strokes white, the rest black
    black = data.black(x)
    cascade = randomization_cascade(linear, lambda m: contribution_map(m, x, probe.y, black), mask=foreground(x, black))
    assert cascade.measure == "spearman_abs_foreground"
    everywhere, inside = cascade.mean("spearman_abs")[-1], cascade.final
    assert everywhere > 0.6 and abs(inside) < 0.2, (everywhere, inside)


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
    assert cascade.mean("ssim")[0] == pytest.approx(1.0)
    assert torch.equal(cascade.maps[0], cascade.trained)
    assert cascade.correlations[1] < 0.5  # the real layer, once random, changes the map


def test_a_copy_trained_on_shuffled_labels_learns_nothing_and_leaves_the_model_alone(linear, data) -> None:
    before = {k: v.clone() for k, v in linear.state_dict().items()}
    subset = replace(data, train_x=data.train_x[:1000], train_y=data.train_y[:1000])
    copy = shuffled_label_copy(linear, subset.train_x, subset.train_y, subset.normalize, epochs=3)
    assert all(torch.equal(before[k], v) for k, v in linear.state_dict().items())
    x, y = data.normalize(data.eval_x), data.eval_y
    assert (linear(x).argmax(1) == y).float().mean() > 0.8
    assert (copy(x).argmax(1) == y).float().mean() < 0.25  # chance is 0.1
    probe = select_probe(data, 1, 0)
    rho = [spearman(a, b) for a, b in zip(saliency(linear, probe.x, probe.y).abs(),
                                          saliency(copy, probe.x, probe.y).abs(), strict=True)]
    assert np.mean(rho) < 0.5


# -- the patches task -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def patches():
    return load_data(DataConfig(dataset="patches"))


def test_the_patches_task_decides_the_class_by_the_patch_position(patches) -> None:
    from interp.data.patches import CLASSES, PATCH

    assert patches.classes == CLASSES and patches.input_shape == (1, 28, 28)
    masks = patches.eval_masks
    assert masks is not None and masks.shape == (1000, 28, 28) and bool((masks.sum((1, 2)) == PATCH**2).all())
    bright = patches.eval_x[:, 0] > 0.5 * 255
    assert torch.equal(bright, masks)  # the patch is the only bright thing in the image
    for label in range(len(CLASSES)):
        chosen = masks[patches.eval_y == label]
        assert len(chosen) > 50 and bool((chosen == chosen[0]).all())  # one position per class
    assert patches.to("cpu").eval_masks is not None


def test_a_linear_models_exact_contribution_lies_in_the_patch(patches) -> None:
    """A linear model fitted from zero weights: W[y] · (x − black) puts ≥ 90 % of its mass in the patch
    (the rest: faint noise times the weights that count against the other positions), while |W[y]|
    alone (the gradient, saliency) spreads over all nine positions."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 9))
    nn.init.zeros_(model[1].weight)
    nn.init.zeros_(model[1].bias)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = patches.normalize(patches.train_x), patches.train_y
    for _ in range(5):
        for batch in torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).split(128):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimiser.step()
    model.eval()
    x, y, masks = patches.normalize(patches.eval_x[:300]), patches.eval_y[:300], patches.eval_masks[:300]
    assert (model(x).argmax(1) == y).float().mean() > 0.99
    exact = mass_inside(contribution_map(model, x, y, patches.black(x)), masks)
    gradient = mass_inside(to_map(saliency(model, x, y), signed=False), masks)
    assert float(exact.mean()) >= 0.9 and float(gradient.mean()) < 0.6, (exact.mean(), gradient.mean())
    uniform = mass_inside(torch.ones(300, 28, 28), masks)  # a map that knows nothing: the patch's area
    assert torch.allclose(uniform, torch.full((300,), 25 / 784))


# -- the stage ---------------------------------------------------------------------------------------
def test_the_trust_images_are_the_probe_then_class_balanced_extras(data, tmp_path: Path) -> None:
    ctx, run = trust_context(IgnoresInput(), data, tmp_path)
    run.close()
    stage = STAGES["trust"](STAGES["trust"].Options(images=60))
    chosen = stage.images(ctx)
    assert torch.equal(chosen[:10], ctx.probe.indices.cpu()) and len(set(chosen.tolist())) == 60
    counts = torch.bincount(data.eval_y[chosen], minlength=10)
    assert int(counts.max() - counts.min()) <= 1, counts
    assert torch.equal(STAGES["trust"](STAGES["trust"].Options(images=4)).images(ctx), ctx.probe.indices[:4].cpu())
    ctx.evaluation.final = False  # before the final epoch: epoch_images (the probe batch by default)
    assert torch.equal(STAGES["trust"](STAGES["trust"].Options(images=60)).images(ctx), ctx.probe.indices.cpu())
    assert len(STAGES["trust"](STAGES["trust"].Options(images=60, epoch_images=15)).images(ctx)) == 15


def test_trust_stage_records_numbers_figures_and_a_table(data, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="allconv", width=4), data.input_shape, 10).eval()
    ctx, run = trust_context(model, data, tmp_path, methods=("saliency", "smoothgrad", "gradcam"))
    stages = [STAGES["saliency"](STAGES["saliency"].Options(smoothgrad_samples=2)), STAGES["gradcam"](),
              STAGES["trust"](STAGES["trust"].Options(steps=8, images=12, ig_steps=8, randomization_images=4,
                                                      road_percentages=[30, 70], resamples=200))]
    results = run_stages(stages, ctx, strict=True)
    numbers = results.numbers
    run.close()
    methods = ["saliency", "smoothgrad", "gradcam"]  # analysis.methods
    for name in [*methods, "edges", "random"]:
        for key in ("deletion_auc", "insertion_auc", "deletion_auc/blur", "insertion_auc/blur", "road_morf",
                    "road_lerf"):
            assert 0.0 <= numbers[f"trust/{name}/{key}"] <= 1.0 or math.isnan(numbers[f"trust/{name}/{key}"])
        rho = numbers[f"trust/{name}/randomization_correlation"]
        assert -1.0 <= rho <= 1.0 or math.isnan(rho)
    assert numbers["trust/edges/randomization_correlation"] == pytest.approx(1.0)  # it knows nothing of weights
    table = results.summaries["trust"]
    assert [row[0] for row in table.rows] == [*methods, "edges", "random"]
    assert table.columns[-1] == "verdict" and len(table.columns) == 10
    assert all(row[-1] in ("trust", "doubt", "uncertain") for row in table.rows[:3])
    assert [row[-1] for row in table.rows[3:]] == ["reference", "reference"]
    written = json.loads((tmp_path / "epoch_003" / "trust" / "summary.json").read_text())
    assert written["rows"] == [[None if isinstance(v, float) and math.isnan(v) else v for v in row]
                               for row in table.rows] and written["epoch"] == 3
    saved = json.loads((tmp_path / "epoch_003" / "trust" / "trust.json").read_text())
    assert set(saved["methods"]) == set(methods) and set(saved["references"]) == {"edges", "random"}
    # the probe batch (10), then the other 2 for the methods whose verdict was still open
    assert saved["images"] in (10, 12) and saved["references"]["random"]["images"] == saved["images"]
    assert all(saved["methods"][m]["images"] in (10, saved["images"]) for m in methods)
    assert len(saved["methods"]["gradcam"]["cascade"]) == len(cascade_layers(model))
    for method in methods:
        checks = {c["check"]: c for c in saved["methods"][method]["checks"]}
        assert {"del. vs random (black)", "ins. vs random (blur)", "MoRF vs random (ROAD)", "faithfulness vs edges",
                "ρ after the top layers", "ρ after randomization"} <= set(checks)
        for check in checks.values():
            low, high = check["interval"]
            assert low <= check["value"] <= high or check["value"] is None
    logged = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "scalars": 0})
    logged.Reload()
    assert {"trust/deletion_insertion", "trust/randomization", "trust/randomization_maps"} <= set(
        logged.Tags()["images"])
    assert logged.Scalars("trust/saliency/deletion_auc/blur")[0].value == pytest.approx(
        numbers["trust/saliency/deletion_auc/blur"], rel=1e-6)


def test_degenerate_maps_are_counted_and_left_out(data, tmp_path: Path) -> None:
    """A model that ignores its input has an all-zero saliency map for every image: counted, reported, and
    not scored by a random tie-break."""
    ctx, run = trust_context(IgnoresInput().eval(), data, tmp_path, final=False)
    stage = STAGES["trust"](STAGES["trust"].Options(steps=4, epoch_images=6, resamples=200))
    summary = run_stages([stage], ctx, strict=True).summaries["trust"]
    run.close()
    saved = json.loads((tmp_path / "epoch_003" / "trust" / "trust.json").read_text())["methods"]["saliency"]
    assert saved["degenerate"] == 6 and saved["verdict"].startswith("doubt: every map degenerate")
    assert saved["metrics"]["deletion/black"]["mean"] is None  # nothing averaged in
    assert summary.rows[0][1] is None or math.isnan(summary.rows[0][1])
    assert "saliency: 6 of 6 maps are degenerate (constant or all zero) and left out of its numbers" in summary.notes
    assert ctx.numbers["trust/saliency/degenerate_maps"] == 6


def test_the_trust_stage_measures_mass_in_the_patch_and_data_randomization(patches, tmp_path: Path) -> None:
    small = replace(patches, train_x=patches.train_x[:600], train_y=patches.train_y[:600])
    torch.manual_seed(0)
    model = fitted(nn.Sequential(nn.Flatten(), nn.Linear(784, 9)), small, steps=60)
    ctx, run = trust_context(model, small, tmp_path, methods=("saliency", "integrated_gradients"))
    stage = STAGES["trust"](STAGES["trust"].Options(steps=4, images=27,
                                                    ig_steps=4, randomization_images=9, road="never",
                                                    data_randomization=True, resamples=200))
    summary = run_stages([stage], ctx, strict=True).summaries["trust"]
    run.close()
    assert summary.columns[-3:] == ["ρ shuffled\nlabels ↓", "mass in\npatch ↑", "verdict"]
    mass = {row[0]: row[-2] for row in summary.rows}
    assert mass["integrated_gradients"] > mass["saliency"] > mass["random"]
    assert mass["random"] == pytest.approx(25 / 784, rel=0.25)
    shuffled = {row[0]: row[-3] for row in summary.rows}
    assert -1 <= shuffled["saliency"] < 0.5 and shuffled["edges"] is None
    assert ctx.numbers["trust/integrated_gradients/mass_in_region"] == pytest.approx(mass["integrated_gradients"])


def test_training_prints_the_trust_table_and_logs_every_epoch(tmp_path: Path) -> None:
    from interp.cli import app

    result = CliRunner().invoke(app, [
        "train", "--save-dir", str(tmp_path), "--set", "train.epochs=2", "--set", "data.train_limit=1000",
        "--set", "analysis.stages=[saliency, {integrated_gradients: {steps: 16, baselines: [black, blur]}}, "
                 "{trust: {steps: 8, images: 20, randomization_images: 5, road_percentages: [50]}}]",
        "--set", "analysis.methods=[saliency, smoothgrad, integrated_gradients, integrated_gradients_blur]"],
        env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    assert "Can you trust the maps?" in result.output
    lines = result.output.splitlines()
    rule = next(i for i, line in enumerate(lines) if "───" in line)
    rows = [line.split() for line in lines[rule + 1:rule + 7]]
    assert [row[0] for row in rows] == ["saliency", "smoothgrad", "integrated_gradients", "integrated_gradients_blur",
                                        "edges", "random"]
    assert all(row[-1] in ("trust", "doubt", "uncertain") and len(row) == 10 for row in rows[:4]), rows
    assert all(row[-1] == "reference" for row in rows[4:]), rows
    metrics = [json.loads(line) for line in (tmp_path / "mnist-mlp" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [0, 1, 2]
    for row in metrics:
        assert "trust/integrated_gradients/deletion_auc" in row and "trust/random/insertion_auc/blur" in row
        # the randomization check and ROAD cost the most, so they run at the final epoch only
        assert ("trust/saliency/randomization_correlation" in row) == (row["epoch"] == 2)
        assert ("trust/integrated_gradients_blur/road_morf" in row) == (row["epoch"] == 2)


def test_the_torch_free_trust_options_match_the_methods_and_rules() -> None:
    """The trust stage names its methods and cut-off without importing torch; they must be the real ones."""
    from interp import trust as rules
    from interp.attribution import METHODS
    from interp.stages import integrated_gradients as ig
    from interp.stages import trust as stage

    assert stage.CORRELATION_LIMIT == rules.CORRELATION_LIMIT
    assert set(ig.METHOD_OF.values()) <= set(METHODS)


def test_the_curves_figure_keeps_its_size_when_road_waits_for_the_last_epoch(linear, data, tmp_path: Path) -> None:
    """ROAD is computed at the last epoch only: before it, the figure keeps an empty ROAD row that says
    so, so that TensorBoard's step slider shows one size of image throughout."""
    from PIL import Image

    sizes = {}
    for epoch, final in ((1, False), (2, True)):
        ctx, run = trust_context(linear, data, tmp_path, epoch=epoch, final=final)
        stage = STAGES["trust"](STAGES["trust"].Options(steps=4, images=6, epoch_images=6,
                                                        randomization="never", resamples=100))
        run_stages([stage], ctx, strict=True)
        run.close()
        sizes[final] = Image.open(tmp_path / f"epoch_{epoch:03d}" / "trust" / "deletion_insertion.png").size
    assert sizes[False] == sizes[True]
    saved = json.loads((tmp_path / "epoch_001" / "trust" / "trust.json").read_text())
    assert saved["road_percentages"] is None  # the row is a placeholder: no ROAD numbers before the last epoch


def test_scoring_stops_once_every_verdict_is_decided_and_not_before(linear, data, tmp_path: Path) -> None:
    """Images are scored the probe batch (10) first, then 10 at a time, until every verdict is decided: the
    exact linear model's saliency settles its checks with the probe batch. The rule itself: a failed check decides (doubt); a check
    whose interval straddles its limit keeps the scoring going unless its mean lies within the half-width
    the interval would have at the cap (more images would not be expected to clear it: futile)."""
    from interp.stages.trust import futile

    ctx, run = trust_context(linear, data, tmp_path)
    stage = STAGES["trust"](STAGES["trust"].Options(steps=4, images=60, road="never", randomization="never",
                                                    resamples=300))
    run_stages([stage], ctx, strict=True)
    run.close()
    saved = json.loads((tmp_path / "epoch_003" / "trust" / "trust.json").read_text())
    assert saved["images"] == 10
    for found in saved["methods"]["saliency"]["checks"]:
        low, high = found["interval"]
        assert found["outcome"] in ("pass", "fail") or futile(Check("c", "", "", found["value"], low, high), 10, 60)

    generator = np.random.default_rng(0)
    metrics = ("deletion/black", "insertion/black")

    def scores(shift: dict[str, float], spread: float) -> dict:
        random = {m: generator.uniform(0.4, 0.6, 40) for m in metrics}
        found = {"random": random, "edges": {m: random[m] + (-0.1 if m.startswith("del") else 0.1) for m in metrics}}
        noise = {m: generator.normal(0, spread, 40) for m in metrics}
        found["m"] = {m: random[m] + shift[m] + noise[m] - noise[m].mean() for m in metrics}  # mean shift exact
        return found

    clear = {"deletion/black": -0.3, "insertion/black": 0.3}
    assert stage.decided("m", scores(clear, 0.01), 100)  # every check passes: trust
    assert stage.decided("m", scores({**clear, "insertion/black": -0.3}, 0.01), 100)  # a failed check: doubt
    # ins. 0.03 above random, the interval about ±0.06 at 40 images (σ 0.2 per image): at 100 images the
    # half-width would be 0.039 and the mean could still move by ±0.016 (1 σ): a 28 % chance to clear, go on
    assert not stage.decided("m", scores({**clear, "insertion/black": 0.03}, 0.2), 100)
    # with 50 at most: half-width 0.055, ±0.013 of movement, a 2 % chance: futile, decided
    assert stage.decided("m", scores({**clear, "insertion/black": 0.03}, 0.2), 50)
    # the rule by hand: half-width 0.04 at 25 images (σ 0.102); at 100: reach 0.020, movement ±0.0088, the
    # chance Φ((0.01 − 0.020) / 0.0088) = 13 % (go on); at 36: reach 0.033, ±0.0094, Φ(−2.5) < 1 % (futile)
    check = Check("c", "", "", value=0.01, low=-0.03, high=0.05)
    assert not futile(check, 25, 100) and futile(check, 25, 36) and futile(check, 36, 36)


def test_each_method_stops_scoring_when_its_own_verdict_is_decided(linear, data, tmp_path: Path) -> None:
    """A method whose verdict is decided is not scored on more images; the others and the references go on;
    its numbers are those of its own images, and the summary says which stopped early."""

    class SalienceDecidesFirst(STAGES["trust"]):  # type: ignore[misc, valid-type]
        def decided(self, method: str, scores: dict, most: int) -> bool:
            return method == "saliency"

    options = STAGES["trust"].Options(steps=4, images=40, road="never", randomization="never", resamples=300)
    found = {}
    for name, stage in (("early", SalienceDecidesFirst(options)), ("ten", STAGES["trust"](options.model_copy(
            update={"images": 10})))):
        ctx, run = trust_context(linear, data, tmp_path / name)
        ctx.methods = ["saliency", "input_x_gradient"]
        summaries = run_stages([stage], ctx, strict=True).summaries
        run.close()
        found[name] = (json.loads((tmp_path / name / "epoch_003" / "trust" / "trust.json").read_text()), summaries)
    saved, summaries = found["early"]
    assert saved["images"] == 40
    assert saved["methods"]["saliency"]["images"] == 10 and saved["methods"]["input_x_gradient"]["images"] == 40
    assert saved["references"]["random"]["images"] == 40
    assert found["ten"][0]["methods"]["saliency"]["metrics"] == saved["methods"]["saliency"]["metrics"]
    assert any("scored on fewer images, their verdicts decided earlier: saliency (10)" in line
               for line in summaries["trust"].notes)


def test_the_final_check_says_how_long_it_will_take_and_what_makes_it_cheaper(linear, data, tmp_path: Path) -> None:
    said: list[str] = []
    ctx, run = trust_context(linear, data, tmp_path)
    ctx.notice = said.append
    stage = STAGES["trust"](STAGES["trust"].Options())
    stage.announce(ctx, seconds=8.0, count=20, most=100, map_seconds=0.25, cascade=True, methods=7)
    stage.announce(ctx, seconds=0.2, count=20, most=100, map_seconds=0.001, cascade=True, methods=7)  # quick: quiet
    run.close()
    # the cascade: 20 images × (the trained map + 1 step) × 0.25 s
    assert said == ["trust: the check at epoch 3 should take about 42 s more at most: scoring up to 80 more images "
                    "(0.4 s each) and the randomization cascade over 1 block on up to 20 images (10 s); it stops "
                    "scoring a method once its verdict is decided. Cheaper: --set analysis.stages.trust.images=20 (fewer images, "
                    "wider intervals), --set analysis.stages.trust.randomization_images=5, or analysis.methods "
                    "without the integrated-gradients variants (7 methods now)"]


def test_coarse_to_fine_curves_keep_the_curve_where_it_moves(linear, data) -> None:
    """With a tolerance of 0 every point is computed, as without one; with 0.02 every fourth point is the
    same, fewer images go through the model, and the mean AUC moves by under 0.002. Given ends (the image's
    and the baseline's probabilities) are used, not computed again."""
    x, y = data.normalize(data.eval_x[:40]), data.eval_y[:40]
    ranking = rank_pixels(torch.rand(40, 28, 28, generator=torch.Generator().manual_seed(0)))
    seen = []
    counting = torch.nn.Sequential(linear)
    counting.register_forward_pre_hook(lambda module, inputs: seen.append(len(inputs[0])))
    for mode in ("deletion", "insertion"):
        seen.clear()
        full = perturbation_curves(counting, x, y, data.black(x), ranking, 20, mode)
        assert sum(seen) == 40 * 21
        assert torch.equal(perturbation_curves(linear, x, y, data.black(x), ranking, 20, mode, tolerance=0.0), full)
        seen.clear()
        coarse = perturbation_curves(counting, x, y, data.black(x), ranking, 20, mode, tolerance=0.02)
        computed = sum(seen)
        assert computed < 40 * 21 * 0.8
        assert torch.equal(coarse[:, ::4], full[:, ::4])
        moved = auc(coarse) - auc(full)  # random orders: curves that are not monotone everywhere
        assert float(moved.abs().max()) < 0.02 and float(moved.mean().abs()) < 0.002
        seen.clear()
        ends = (full[:, 0], full[:, -1])
        given = perturbation_curves(counting, x, y, data.black(x), ranking, 20, mode, tolerance=0.02, ends=ends)
        assert sum(seen) == computed - 2 * 40  # the two ends of every curve
        torch.testing.assert_close(given, coarse, rtol=0, atol=1e-6)


def test_the_cascade_goes_over_blocks_and_joins_its_images(linear, data) -> None:
    resnet = build_model(ModelConfig(arch="torchvision:resnet18"), (1, 28, 28), 10)
    assert cascade_layers(resnet) == ["fc", "layer4", "layer3", "layer2", "layer1", "conv1"]
    x, y = data.normalize(data.eval_x[:6]), data.eval_y[:6]
    from interp.attribution import saliency

    def compute(net):
        return saliency(net, x, y).abs().amax(1)

    whole = randomization_cascade(linear, compute, seed=3)
    halves = randomization_cascade(linear, lambda net: compute(net)[:3], seed=3).joined(
        randomization_cascade(linear, lambda net: compute(net)[3:], seed=3))
    for a, b in zip(whole.scores, halves.scores, strict=True):
        for measure in a:
            np.testing.assert_allclose(a[measure], b[measure], rtol=1e-6)

    # maps after some steps only: the others still re-initialize their block, their numbers are NaN
    two = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    every = randomization_cascade(two, compute, seed=3)
    last = randomization_cascade(two, compute, seed=3, at={1})
    assert len(every.layers) == len(last.layers) == 2
    assert all(np.isnan(values).all() for values in last.scores[0].values()) and last.maps[0].isnan().all()
    for measure in every.scores[1]:
        np.testing.assert_allclose(last.scores[1][measure], every.scores[1][measure], rtol=1e-6)
    assert math.isnan(last.mean()[0]) and last.final == every.final


def test_the_analysis_bar_counts_the_stages_and_says_what_the_trust_stage_is_doing(linear, data, tmp_path) -> None:
    """A reporter's bar gets one step per stage and, when its advance takes a description, what the running
    stage is doing; a reporter whose advance takes the count alone still works."""
    import contextlib

    said: list[tuple[int, str | None]] = []
    counted: list[int] = []

    @contextlib.contextmanager
    def saying(description: str, total: int):
        said.append((total, description))
        yield lambda n, what=None: said.append((n, what))

    @contextlib.contextmanager
    def counting(description: str, total: int):
        yield counted.append

    for progress in (saying, counting):
        ctx, run = trust_context(linear, data, tmp_path / progress.__name__, final=False)
        ctx.progress = progress
        stages = [STAGES["confusion"](), STAGES["trust"](STAGES["trust"].Options(steps=4, resamples=100))]
        run_stages(stages, ctx, strict=True)
        run.close()
    assert said[0] == (2, "analysis") and sum(n for n, _ in said[1:]) == 2 == sum(counted)
    whats = [what for _, what in said[1:] if what]
    assert whats[:2] == ["analysis · confusion", "analysis · trust"]
    assert "analysis · trust: scoring 1 method on images 1–10 of at most 10" in whats and whats[-1] == "analysis"
