"""``interp animate``: the toy data, the hidden-space geometry, and the files an animation writes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from matplotlib.transforms import Bbox
from PIL import Image, ImageSequence
from typer.testing import CliRunner

from interp.animate.command import animate_config
from interp.animate.figures import PolynomialFigure, RingsFigure, _stretches, polynomial_ylim
from interp.animate.geometry import decision_line, grid_lines, warp_grid
from interp.animate.learners import check_shapes, make_learners, make_problem, measure
from interp.cli import app
from interp.config import bundled_config, load_config
from interp.data import toy
from interp.errors import UserError
from interp.models import MLP
from interp.video import mp4_duration

runner = CliRunner()


def small_rings(*overrides: str) -> Any:
    """The bundled rings config cut down: 1,000 points per ring, batches of 100 (20 steps per epoch)."""
    return load_config(bundled_config("rings"), ["data.points=1000", "data.batch_size=100", "train.lr=0.05",
                                                 "animate.display_points=200", *overrides])


@pytest.fixture(scope="module")
def rings_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], dict[str, Any]]:
    """One small rings animation (6 frames, a 1-unit and a 3-unit first layer) shared by the tests below."""
    save = tmp_path_factory.mktemp("save")
    outputs = animate_config(small_rings("animate.frames=6", "animate.hidden=[[1,2],[3,2]]"), save_dir=save)
    metrics = json.loads(next(p for p in outputs if p.suffix == ".json").read_text())
    return outputs, metrics


# -- the data ------------------------------------------------------------------------------------------


def test_rings_are_two_noisy_circles() -> None:
    x, y = toy.rings(20_000, 0.005, seed=0)
    assert x.shape == (40_000, 2) and x.dtype == torch.float32 and y.dtype == torch.int64
    radius = x.double().norm(dim=1)
    for label, expected in ((0, 0.5), (1, 1.0)):
        ring = radius[y == label]
        assert len(ring) == 20_000
        assert abs(float(ring.mean()) - expected) < 1e-3
        assert float(ring.std()) == pytest.approx(0.005, rel=0.05)
    assert len(toy.as_data("rings", points=None, noise=0.005, seed=0).train_x) == 40_000  # 20,000 per ring


def test_polynomial_is_the_quartic_on_minus_two_to_two() -> None:
    train_x, train_y, test_x, test_y = toy.polynomial(seed=0)
    assert train_x.shape == (4_000, 1) and test_x.shape == (400, 1)
    for x, y in ((train_x, train_y), (test_x, test_y)):
        assert torch.allclose(y, x**4 - 3 * x**2 + x + 1)
    assert float(train_x.min()) >= -2.0 and float(train_x.max()) <= 2.0
    counts = torch.histc(train_x, bins=8, min=-2.0, max=2.0)
    assert float(counts.min()) > 400 and float(counts.max()) < 600  # 500 expected per bin
    assert torch.allclose(test_x[:, 0], torch.linspace(-2.0, 2.0, 400))
    assert float(test_x[1, 0] - test_x[0, 0]) == pytest.approx(4 / 399, abs=1e-6)


@pytest.mark.parametrize("name", ["rings", "polynomial", "default", "mnist_mlp", "mnist_allconv", "cifar10_allconv"])
def test_bundled_configs_load(name: str) -> None:
    cfg = load_config(bundled_config(name))
    if name in ("rings", "polynomial"):
        assert cfg.data.dataset == name and cfg.model.activation == "tanh"
        check_shapes(name, [list(h) for h in cfg.animate.hidden])


# -- geometry ------------------------------------------------------------------------------------------


def test_decision_line_is_where_the_output_layer_says_one_half() -> None:
    torch.manual_seed(0)
    model = MLP((2,), 1, [3, 2], "tanh")
    with torch.no_grad():
        model.head.bias.fill_(0.3)  # a line that crosses the view
        ends = torch.as_tensor(decision_line(model.head, (-1.0, 1.0), (-1.0, 1.0)), dtype=torch.float32)
        along = torch.linspace(0, 1, 11)[:, None]
        points = ends[0] + along * (ends[1] - ends[0])
        assert torch.allclose(torch.sigmoid(model.head(points)), torch.full((11, 1), 0.5), atol=1e-5)

        model.head.weight.copy_(torch.tensor([[2.0, 0.0]]))  # b = 0: the vertical line h₁ = −c / a
        model.head.bias.fill_(0.5)
        ends = torch.as_tensor(decision_line(model.head, (-1.0, 1.0), (-1.0, 1.0)), dtype=torch.float32)
        assert torch.allclose(ends[:, 0], torch.tensor([-0.25, -0.25]))
        assert torch.allclose(ends[:, 1], torch.tensor([-1.0, 1.0]))
        assert torch.allclose(torch.sigmoid(model.head(ends)), torch.full((2, 1), 0.5))

        model.head.weight.zero_()
        assert decision_line(model.head, (-1.0, 1.0), (-1.0, 1.0)) is None


def test_grid_lines_cover_the_square_every_tenth() -> None:
    lines = grid_lines()
    assert lines.shape[0] == 42 and lines.shape[2] == 2 and lines.shape[1] >= 100
    horizontal, vertical = lines[:21], lines[21:]
    levels = torch.linspace(-1.0, 1.0, 21)
    assert torch.allclose(horizontal[:, :, 1], levels[:, None].expand_as(horizontal[:, :, 1]))
    assert torch.allclose(vertical[:, :, 0], levels[:, None].expand_as(vertical[:, :, 0]))
    assert torch.allclose(levels.diff(), torch.full((20,), 0.1))
    for along in (horizontal[:, :, 0], vertical[:, :, 1]):
        assert float(along.min()) == -1.0 and float(along.max()) == 1.0


def test_warped_grid_is_the_network_applied_to_the_grid() -> None:
    torch.manual_seed(0)
    model = MLP((2,), 1, [4, 2], "tanh")
    lines = grid_lines(samples=51)
    warped = warp_grid(model, lines)
    assert warped.shape == (42, 51, 2)
    with torch.no_grad():
        logits, features = model.forward_features(lines.reshape(-1, 2))
        assert torch.allclose(warped.reshape(-1, 2), features)
        assert torch.allclose(model.head(warped).reshape(-1, 1), logits, atol=1e-6)  # the rest of the net


# -- the animation -------------------------------------------------------------------------------------


def test_animation_has_one_frame_per_configured_frame(rings_run: tuple[list[Path], dict[str, Any]]) -> None:
    outputs, metrics = rings_run
    assert [p.name for p in outputs] == ["rings.gif", "rings.png", "rings.json"]
    assert all(p.parent.name == "animations" and p.is_file() for p in outputs)
    assert (outputs[0].parent.parent / "config.yaml").is_file()
    with Image.open(outputs[0]) as gif:
        assert gif.n_frames == 6  # animate.frames = 6: frame 0 (untrained) and 5 epochs
        size = gif.size
    with Image.open(outputs[1]) as png:
        assert png.size == size
    assert [entry["frame"] for entry in metrics["frames"]] == [0, 1, 2, 3, 4, 5]
    assert [entry["epoch"] for entry in metrics["frames"]] == [0, 1, 2, 3, 4, 5]
    assert [entry["step"] for entry in metrics["frames"]] == [0, 20, 40, 60, 80, 100]
    assert metrics["architectures"] == ["2-1-2-1", "2-3-2-1"]
    for entry in metrics["frames"]:
        assert [m["shape"] for m in entry["models"]] == metrics["architectures"]
        assert all(0.0 <= m["accuracy"] <= 1.0 and m["loss"] > 0 for m in entry["models"])


def test_every_frame_has_one_size_and_nothing_cut_at_its_sides(
        rings_run: tuple[list[Path], dict[str, Any]]) -> None:
    """Two panels (as ``--hidden 1,2 --hidden 3,2``): the legend used to run over both sides of every frame."""
    outputs = rings_run[0]
    with Image.open(outputs[1]) as png:
        size = png.size
    with Image.open(outputs[0]) as gif:
        frames = [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(gif)]
    assert len(frames) == 6
    for frame in [*frames, np.asarray(Image.open(outputs[1]).convert("RGB"))]:
        assert frame.shape == (size[1], size[0], 3)
        for side in (frame[:, :3], frame[:, -3:], frame[:3]):  # left, right, top: white
            assert side.min() >= 250, "something is drawn up to the frame's edge"


def test_training_lowers_the_loss_of_the_three_unit_net(rings_run: tuple[list[Path], dict[str, Any]]) -> None:
    losses = [entry["models"][1]["loss"] for entry in rings_run[1]["frames"]]
    assert losses[-1] < 0.75 * losses[0]
    assert rings_run[1]["frames"][-1]["models"][1]["accuracy"] > 0.75


def test_polynomial_mp4_lasts_frames_over_fps(tmp_path: Path) -> None:
    cfg = load_config(bundled_config("polynomial"), ["data.points=400", "animate.hidden=[[3],[2,2]]",
                                                     "animate.frames=6", "animate.fps=4", "animate.format=mp4",
                                                     "animate.steps_per_frame=3"])
    outputs = animate_config(cfg, save_dir=tmp_path, name="poly")
    assert [p.name for p in outputs] == ["polynomial.gif", "polynomial.mp4", "polynomial.png", "polynomial.json"]
    assert mp4_duration(outputs[1]) == pytest.approx(6 / 4, abs=0.1)
    metrics = json.loads(outputs[3].read_text())
    assert [entry["step"] for entry in metrics["frames"]] == [0, 3, 6, 9, 12, 15]
    assert metrics["architectures"] == ["1-3-1", "1-2-2-1"]
    assert all({"loss", "test_loss"} <= set(m) for entry in metrics["frames"] for m in entry["models"])
    with pytest.raises(UserError, match="already exists"):  # --name is taken exactly, never reused
        animate_config(cfg, save_dir=tmp_path, name="poly")
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(outputs[1]))
    meta = next(reader)
    with Image.open(outputs[2]) as png:
        width, height = png.size
    assert tuple(meta["size"]) == (width + width % 2, height + height % 2)  # padded to even sides
    assert sum(1 for _ in reader) == 6  # every frame decodes at that size


# -- the figures ---------------------------------------------------------------------------------------

RINGS_SHAPES = {1: "[[3,2]]", 2: "[[3,2],[4,2]]", 3: "[[1,2],[3,2],[4,2]]", 4: "[[1,2],[2,2],[3,2],[4,2]]"}
POLYNOMIAL_SHAPES = {1: "[[6]]", 2: "[[6],[3,3]]", 3: "[[2],[6],[3,3]]", 4: "[[2],[6],[3,3],[3,1,3]]"}


def make_figure(dataset: str, panels: int) -> RingsFigure | PolynomialFigure:
    """The animation's figure for ``panels`` architectures, their metrics measured (untrained)."""
    if dataset == "rings":
        cfg = small_rings(f"animate.hidden={RINGS_SHAPES[panels]}")
    else:
        cfg = load_config(bundled_config("polynomial"), ["data.points=400",
                                                         f"animate.hidden={POLYNOMIAL_SHAPES[panels]}"])
    problem = make_problem(cfg)
    learners = make_learners(cfg, problem)
    for learner in learners:
        learner.history.append(measure(learner, problem))
    if dataset == "rings":
        return RingsFigure(learners, problem, cfg.model.activation)
    return PolynomialFigure(learners, problem)


def inside(inner: Bbox, outer: Bbox) -> bool:
    return bool(inner.x0 >= outer.x0 and inner.y0 >= outer.y0 and inner.x1 <= outer.x1 and inner.y1 <= outer.y1)


@pytest.mark.parametrize("panels", [1, 2, 3, 4])
@pytest.mark.parametrize("dataset", ["rings", "polynomial"])
def test_legend_and_caption_fit_inside_the_figure(dataset: str, panels: int) -> None:
    figure = make_figure(dataset, panels)
    captions = [f"{dataset}, untrained  ·  sgd lr 0.001, batch 2000",
                f"{dataset}, after 1999 epochs  ·  sgd lr 0.001, batch 2000"]
    figure.fit_caption(captions)
    shapes = set()
    for caption in (captions[0], captions[1], captions[0]):  # the layout is fixed on the first frame
        figure.update(caption)
        pixels = figure.grab()
        shapes.add(pixels.shape)
        renderer = figure.canvas.get_renderer()
        page = figure.fig.bbox
        legend = figure.fig.legends[0].get_window_extent(renderer)
        title = figure.suptitle.get_window_extent(renderer)
        assert inside(legend, page), (legend, page)
        assert inside(title, page), (title, page)
        for ax in figure.fig.axes:  # the room for them is reserved: neither covers a panel or its labels
            panel = ax.get_tightbbox(renderer)
            assert panel is not None and inside(panel, page)
            assert not legend.overlaps(panel) and not title.overlaps(panel)
        for side in (pixels[:, :2], pixels[:, -2:], pixels[:2], pixels[-2:]):
            assert side.min() >= 250, "something is drawn up to the figure's edge"
    assert len(shapes) == 1  # every frame has the same size


def test_polynomial_panels_show_the_whole_target_in_every_frame() -> None:
    figure = make_figure("polynomial", 2)
    assert isinstance(figure, PolynomialFigure)
    x = torch.linspace(-2.0, 2.0, 100_001)  # the data's range, finer than the drawn curve
    target = toy.polynomial_target(x)
    low, high = float(target.min()), float(target.max())
    assert low == pytest.approx(-2.51, abs=0.01) and high == pytest.approx(7.0)
    margin = 0.05 * (high - low)
    for caption in ("polynomial, untrained", "polynomial, after 1 epoch"):
        figure.update(caption)
        figure.grab()
        for ax in figure.fig.axes:
            bottom, top = ax.get_ylim()
            assert bottom <= low - margin and top >= high + margin
            assert top - bottom < 1.5 * (high - low)  # and not so loose that the curve is small
            left, right = ax.get_xlim()
            assert left <= -2.0 and right >= 2.0
    assert figure.fig.axes[0].get_ylim() == pytest.approx(polynomial_ylim(target.numpy()), abs=1e-3)


def test_polynomial_output_off_the_view_is_marked() -> None:
    figure = make_figure("polynomial", 2)
    assert isinstance(figure, PolynomialFigure)
    figure.update("polynomial, untrained")
    figure.grab()
    limits = [ax.get_ylim() for ax in figure.fig.axes]
    assert all(len(line.get_xdata()) == 0 for line in figure.above + figure.below)  # an untrained net stays inside
    assert [note.get_text() for note in figure.notes] == ["", ""]

    shifts = (25.0, -25.0)  # the first net's output far above the view, the second's far below
    for learner, shift in zip(figure.learners, shifts, strict=True):
        with torch.no_grad():
            learner.model.head.bias += shift
    figure.update("polynomial, after 1 epoch")
    figure.grab()
    assert [ax.get_ylim() for ax in figure.fig.axes] == limits  # the view does not follow the output
    outputs = [line.get_ydata() for line in figure.outputs]
    assert min(outputs[0]) > limits[0][1] and max(outputs[1]) < limits[1][0]
    assert len(figure.above[0].get_xdata()) == 1 and len(figure.below[0].get_xdata()) == 0
    assert len(figure.below[1].get_xdata()) == 1 and len(figure.above[1].get_xdata()) == 0
    assert figure.notes[0].get_text() == f"output up to {max(outputs[0]):.3g}, off the view"
    assert figure.notes[1].get_text() == f"output down to −{-min(outputs[1]):.3g}, off the view"
    for marker in figure.above + figure.below:
        assert all(-2.0 <= x <= 2.0 for x in marker.get_xdata())

    values = np.array([0.0, 9.0, 12.0, 8.5, 1.0, 11.0, 0.0, 10.0])  # three stretches above 8: one marker each
    assert _stretches(values > 8.0, values, np.argmax).tolist() == [2, 5, 7]
    assert _stretches(values > 20.0, values, np.argmax).tolist() == []


def test_shapes_the_hidden_space_cannot_show_are_refused() -> None:
    with pytest.raises(UserError, match=r"last hidden layer must have 2 units.*--hidden 3,3,2"):
        check_shapes("rings", [[3, 2], [3, 3]])
    check_shapes("polynomial", [[3, 3]])  # any shape fits a curve


# -- the command line ----------------------------------------------------------------------------------


def test_cli_animates_rings_by_default(tmp_path: Path) -> None:
    result = runner.invoke(app, ["animate", "--hidden", "3,2", "--frames", "2", "--set", "data.points=500",
                                 "--save-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "rings" / "animations" / "rings.gif") as gif:
        assert gif.n_frames == 2
    assert "rings.gif" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hidden", "3,x"], "error: --hidden '3,x': expected positive sizes"),
        (["--hidden", "3,3"], "error: animate.hidden [3, 3]: on rings the last hidden layer must have 2 units"),
        (["--set", "data.dataset=mnist-sample"], "error: interp animate draws the toy problems"),
        (["--format", "avi"], "error: "),
    ],
)
def test_cli_mistakes_exit_2_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["animate", "--frames", "2", "--save-dir", str(tmp_path), *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.output
    assert not any(tmp_path.iterdir())  # refused before a run folder is made
