"""``interp animate``: small networks learning the toy problems, drawn frame by frame.

Every architecture in ``animate.hidden`` is trained side by side on the same data, with the same seed
and the same minibatches, and gets its own panel in one animation:

* ``rings`` (classification): an MLP whose last hidden layer has 2 units feeds one sigmoid output.
  The upper panel is the input plane, coloured by the predicted probability of the outer ring, with the
  ring points on top. The lower panel is the 2-unit hidden space: the ring points, a regular grid of the
  input square [−1, 1]² (lines 0.1 apart) carried through the network, and the decision line
  a·h₁ + b·h₂ + c = 0 of the output layer, where the predicted probability is 0.5.
* ``polynomial`` (regression): the target y = x⁴ − 3x² + x + 1 and the network's output on the 400
  evenly spaced test points.

Frames: ``animate.frames`` = N gives N pictures. Frame 0 is the untrained network; frame k shows it
after k epochs (or k · ``animate.steps_per_frame`` minibatch steps), so N − 1 rounds of training.

Output, in ``save/<run>/animations/``: ``<dataset>.gif`` (always), ``<dataset>.mp4`` (``format: mp4``),
``<dataset>.png`` (the last frame) and ``<dataset>.json`` (loss and accuracy of every architecture at
every frame). The figure's artists are made once and updated in place; each frame is drawn once and
the same pixels go into every file.

The networks are :class:`interp.models.MLP` with ``model.activation``, trained on the CPU with
``train``'s optimizer settings and ``data.batch_size`` (``model.hidden``, ``model.arch``,
``train.device`` and ``data.train_limit`` do not apply here).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image
from torch import Tensor, nn

from .. import plotting  # noqa: F401  (the Agg backend and the project's font sizes)
from ..config import Config, save_config
from ..data import toy
from ..errors import UserError
from ..models import MLP
from ..run import Run
from ..train import Reporter, SilentReporter, make_optimizer
from .video import write_video

__all__ = [
    "GRID_EXTENT",
    "GRID_SPACING",
    "INPUT_VIEW",
    "animate_config",
    "check_shapes",
    "decision_line",
    "grid_lines",
    "shape_label",
    "warp_grid",
]

TOY_DATASETS = ("rings", "polynomial")
INPUT_VIEW = 1.3  # the input-plane panel shows [−1.3, 1.3]²
GRID_EXTENT = 1.0  # the warped grid covers the input square [−1, 1]² …
GRID_SPACING = 0.1  # … with lines 0.1 apart (21 horizontal and 21 vertical lines)
GRID_SAMPLES = 201  # points along each grid line
PROBABILITY_PIXELS = 120  # the probability images are this many pixels square
POLYNOMIAL_YLIM = (-2.5, 7.5)  # the target spans about −1.4 … 7 on [−2, 2]
DPI = 90
CLASS_COLOURS = ("#1d3f8f", "#b0151f")  # inner ring (label 0), outer ring (label 1)
OUTPUT_COLOUR = "#d62728"
# Probability of the outer ring: pale blue (0) → white (0.5) → pale red (1), so the points stay visible.
PROBABILITY_CMAP = LinearSegmentedColormap.from_list("ring_probability", ["#9db7e6", "#ffffff", "#eda1a1"])


# -- geometry -----------------------------------------------------------------------------------------


def shape_label(input_size: int, hidden: list[int], outputs: int = 1) -> str:
    """The layer widths joined by dashes, input to output: ``2-3-2-1`` for hidden ``[3, 2]`` on rings."""
    return "-".join(str(width) for width in (input_size, *hidden, outputs))


def grid_lines(extent: float = GRID_EXTENT, spacing: float = GRID_SPACING, samples: int = GRID_SAMPLES) -> Tensor:
    """A regular grid of the square [−extent, extent]² as densely sampled lines.

    Returns (2·n, samples, 2) float32 with n = 2·extent/spacing + 1 lines per direction: first the
    horizontal lines (constant x₂, bottom to top), then the vertical ones (constant x₁, left to right).
    """
    count = round(2 * extent / spacing) + 1
    levels = torch.linspace(-extent, extent, count)
    along = torch.linspace(-extent, extent, samples)
    horizontal = torch.stack([along.expand(count, samples), levels[:, None].expand(count, samples)], dim=2)
    vertical = torch.stack([levels[:, None].expand(count, samples), along.expand(count, samples)], dim=2)
    return torch.cat([horizontal, vertical])


@torch.no_grad()
def warp_grid(model: MLP, lines: Tensor) -> Tensor:
    """``lines`` (…, 2) in the input plane carried through the hidden layers of ``model``: (…, last width)."""
    flat = lines.reshape(-1, lines.shape[-1])
    return model.features(flat).reshape(*lines.shape[:-1], -1)


@torch.no_grad()
def decision_line(head: nn.Linear, xlim: tuple[float, float], ylim: tuple[float, float]) -> np.ndarray | None:
    """The two ends of the line a·h₁ + b·h₂ + c = 0 (sigmoid output 0.5) of a 2 → 1 output layer.

    ``a``, ``b`` are the layer's weights and ``c`` its bias. The line is parametrised along the axis it
    is closer to parallel with, so a vertical line (b ≈ 0) is exact too: h₂ runs over ``ylim`` when
    |a| > |b|, else h₁ runs over ``xlim``; the ends may lie outside the view (axes clip them). Returns
    a (2, 2) array of (h₁, h₂) rows, or None when both weights are 0 (no line).
    """
    if head.in_features != 2 or head.out_features != 1:
        raise ValueError(f"decision_line needs a 2 → 1 layer, got {head.in_features} → {head.out_features}")
    a, b = (float(w) for w in head.weight[0].double())
    c = float(head.bias[0]) if head.bias is not None else 0.0
    if a == 0.0 and b == 0.0:
        return None
    if abs(b) >= abs(a):
        h1 = np.array(xlim, dtype=np.float64)
        return np.stack([h1, -(a * h1 + c) / b], axis=1)
    h2 = np.array(ylim, dtype=np.float64)
    return np.stack([-(b * h2 + c) / a, h2], axis=1)


def check_shapes(dataset: str, shapes: list[list[int]]) -> None:
    """Refuse shapes the animation cannot draw (a :class:`UserError` that names the fix)."""
    if not shapes:
        raise UserError("animate.hidden is empty: give at least one shape, e.g. --hidden 3,2")
    if dataset != "rings":
        return
    for hidden in shapes:
        if not hidden or hidden[-1] != 2:
            fixed = ",".join(str(w) for w in [*hidden, 2])
            raise UserError(f"animate.hidden {hidden}: on rings the last hidden layer must have 2 units (the "
                            f"hidden-space panel is a plane); use e.g. --hidden {fixed}")


# -- training -----------------------------------------------------------------------------------------


@dataclass
class _Problem:
    """The toy data as float tensors, and what the panels draw of it."""

    name: str
    train_x: Tensor
    train_y: Tensor  # rings: (N, 1) float 0/1; polynomial: (N, 1) targets
    test_x: Tensor
    test_y: Tensor
    shown: Tensor  # rings: indices of the points drawn, display_points per class

    @property
    def classification(self) -> bool:
        return self.name == "rings"


@dataclass
class _Learner:
    hidden: list[int]
    label: str
    model: MLP
    optimizer: torch.optim.Optimizer
    history: list[dict[str, float]] = field(default_factory=list)


def _problem(cfg: Config) -> _Problem:
    data = cfg.data
    if data.dataset == "rings":
        generator = torch.Generator().manual_seed(cfg.seed)
        per_class = cfg.animate.display_points
        points = data.points or 20_000
        x, y = toy.rings(points, data.noise, cfg.seed)
        shown = torch.cat([torch.nonzero(y == label).flatten()[torch.randperm(points, generator=generator)[:per_class]]
                           for label in range(len(toy.RING_RADII))])
        shown = shown[torch.randperm(len(shown), generator=generator)]  # mixed, so neither ring hides the other
        labels = y.float().unsqueeze(1)
        return _Problem("rings", x, labels, x, labels, shown)
    train_x, train_y, test_x, test_y = toy.polynomial(data.points or 4_000, seed=cfg.seed)
    return _Problem("polynomial", train_x, train_y, test_x, test_y, torch.empty(0, dtype=torch.long))


class _Batches:
    """The minibatch indices of each frame: a fresh epoch (``steps`` None), or the next ``steps`` batches
    of a shuffled order that is reshuffled after every pass over the data."""

    def __init__(self, n: int, batch_size: int, steps: int | None, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.steps, self.generator = n, batch_size, steps, generator
        self.order = torch.randperm(n, generator=generator)
        self.start = 0

    def next_frame(self) -> list[Tensor]:
        if self.steps is None:
            return list(torch.randperm(self.n, generator=self.generator).split(self.batch_size))
        batches = []
        for _ in range(self.steps):
            if self.start >= self.n:
                self.order, self.start = torch.randperm(self.n, generator=self.generator), 0
            batches.append(self.order[self.start:self.start + self.batch_size])
            self.start += self.batch_size
        return batches


@torch.no_grad()
def _measure(learner: _Learner, problem: _Problem) -> dict[str, float]:
    model = learner.model.eval()
    output = model(problem.train_x)
    if problem.classification:
        loss = nn.functional.binary_cross_entropy_with_logits(output, problem.train_y)
        accuracy = ((output > 0).float() == problem.train_y).float().mean()
        return {"loss": float(loss), "accuracy": float(accuracy)}
    test_loss = nn.functional.mse_loss(model(problem.test_x), problem.test_y)
    return {"loss": float(nn.functional.mse_loss(output, problem.train_y)), "test_loss": float(test_loss)}


# -- figures ------------------------------------------------------------------------------------------


class _Figure:
    """A figure whose artists are built once; :meth:`update` changes their data and :meth:`grab` draws."""

    def __init__(self, width: float, height: float) -> None:
        self.fig = Figure(figsize=(width, height), dpi=DPI, facecolor="white", layout="constrained")
        self.canvas = FigureCanvasAgg(self.fig)
        self._layout_fixed = False

    def grab(self) -> np.ndarray:
        """Draw the figure and return its pixels (H, W, 3) uint8."""
        self.canvas.draw()
        if not self._layout_fixed:  # lay out once, on the first frame; later frames keep the positions
            self.fig.set_layout_engine("none")
            self._layout_fixed = True
        return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()


def _grid(count: int, max_cols: int) -> tuple[int, int]:
    cols = min(count, max_cols)
    return math.ceil(count / cols), cols


def _bare(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal")


class _RingsFigure(_Figure):
    """Per architecture, the input plane above the 2-unit hidden space."""

    def __init__(self, learners: list[_Learner], problem: _Problem, activation: str) -> None:
        rows, cols = _grid(len(learners), 4)
        super().__init__(cols * 2.3 + 0.35, rows * 4.75 + 0.45)
        self.learners, self.problem = learners, problem
        self.fixed_limits = {"tanh": (-1.08, 1.08), "sigmoid": (-0.04, 1.04)}.get(activation)
        self.lines = grid_lines()
        self.shown_x = problem.train_x[problem.shown]
        colours = np.array(CLASS_COLOURS)[problem.train_y[problem.shown, 0].long().numpy()]
        side = torch.linspace(-INPUT_VIEW, INPUT_VIEW, PROBABILITY_PIXELS)
        mesh = torch.meshgrid(side, side, indexing="xy")
        self.plane = torch.stack([mesh[0].flatten(), mesh[1].flatten()], dim=1)

        self.images, self.points, self.hidden_images, self.boundaries = [], [], [], []
        self.warped: list[LineCollection] = []
        self.bottoms: list[Axes] = []
        self.titles = []
        outer = self.fig.add_gridspec(rows, cols)
        shown = self.shown_x.numpy()
        for i in range(len(learners)):
            cell = outer[divmod(i, cols)].subgridspec(2, 1)
            top, bottom = self.fig.add_subplot(cell[0]), self.fig.add_subplot(cell[1])
            view = (-INPUT_VIEW, INPUT_VIEW, -INPUT_VIEW, INPUT_VIEW)
            self.images.append(top.imshow(np.full((PROBABILITY_PIXELS,) * 2, 0.5), extent=view, origin="lower",
                                          cmap=PROBABILITY_CMAP, vmin=0.0, vmax=1.0, interpolation="bilinear"))
            for colour in CLASS_COLOURS:  # one colour per collection draws faster; the rings do not overlap here
                mask = colours == colour
                top.scatter(shown[mask, 0], shown[mask, 1], s=0.4, c=colour, linewidths=0)
            top.set_xlim(-INPUT_VIEW, INPUT_VIEW)
            top.set_ylim(-INPUT_VIEW, INPUT_VIEW)
            self.titles.append(top.set_title(" ", fontsize=8.5))
            _bare(top)

            self.hidden_images.append(bottom.imshow(np.full((PROBABILITY_PIXELS,) * 2, 0.5), extent=(-1, 1, -1, 1),
                                                    origin="lower", cmap=PROBABILITY_CMAP, vmin=0.0, vmax=1.0,
                                                    interpolation="bilinear"))
            grid = LineCollection([], colors="#444444", linewidths=0.3, alpha=0.45, zorder=1)
            bottom.add_collection(grid)
            self.warped.append(grid)
            self.bottoms.append(bottom)
            self.points.append(bottom.scatter(shown[:, 0], shown[:, 1], s=1.5, c=colours, linewidths=0, zorder=3))
            self.boundaries.append(bottom.add_line(Line2D([], [], color="black", linewidth=1.1, linestyle="--",
                                                                 zorder=4)))
            _bare(bottom)
            if i % cols == 0:
                top.set_ylabel("input plane (x₁, x₂)", fontsize=8)
                bottom.set_ylabel("last hidden layer (h₁, h₂)", fontsize=8)
        self.suptitle = self.fig.suptitle(" ")
        self.fig.legend(handles=[Line2D([], [], linestyle="", marker="o", markersize=4, color=colour, label=name)
                                 for colour, name in zip(CLASS_COLOURS, toy.RING_CLASSES, strict=True)]
                        + [Line2D([], [], color="black", linestyle="--", label="decision line (p = 0.5)"),
                           Line2D([], [], color="#555555", linewidth=0.8, label="grid of [−1, 1]² warped")],
                        loc="outside lower center", ncols=4, frameon=False, fontsize=8)

    @torch.no_grad()
    def update(self, caption: str) -> None:
        for i, learner in enumerate(self.learners):
            model = learner.model.eval()
            probability = torch.sigmoid(model(self.plane)).reshape(PROBABILITY_PIXELS, PROBABILITY_PIXELS)
            self.images[i].set_data(probability.numpy())
            hidden = model.features(self.shown_x).numpy()
            self.points[i].set_offsets(hidden)
            warped = warp_grid(model, self.lines).numpy()
            self.warped[i].set_segments(list(warped))
            ax = self.bottoms[i]
            if self.fixed_limits is not None:
                xlim = ylim = self.fixed_limits
            else:  # unbounded activations: follow the points and the grid
                xlim, ylim = _limits(np.concatenate([hidden, warped.reshape(-1, 2)]))
            ax.set_xlim(*xlim)
            ax.set_ylim(*ylim)
            head = model.head
            a, b = head.weight[0].numpy()
            c = float(head.bias[0])
            h1, h2 = np.meshgrid(np.linspace(*xlim, PROBABILITY_PIXELS), np.linspace(*ylim, PROBABILITY_PIXELS))
            self.hidden_images[i].set_data(1.0 / (1.0 + np.exp(-(a * h1 + b * h2 + c))))
            self.hidden_images[i].set_extent((*xlim, *ylim))
            line = decision_line(head, xlim, ylim)
            self.boundaries[i].set_data(*(line.T if line is not None else ([], [])))
            metrics = learner.history[-1]
            self.titles[i].set_text(f"{learner.label}\nloss {metrics['loss']:.3f} · acc {metrics['accuracy']:.1%}")
        self.suptitle.set_text(caption)


def _limits(points: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    low, high = np.percentile(points, [0.5, 99.5], axis=0)
    centre, half = (low + high) / 2, max(float((high - low).max()) / 2, 1e-3) * 1.08
    return (centre[0] - half, centre[0] + half), (centre[1] - half, centre[1] + half)


class _PolynomialFigure(_Figure):
    """Per architecture, the target curve and the network's output on the test points."""

    def __init__(self, learners: list[_Learner], problem: _Problem) -> None:
        rows, cols = _grid(len(learners), 3)
        super().__init__(cols * 3.0 + 0.3, rows * 2.45 + 0.5)
        self.learners, self.problem = learners, problem
        test_x, test_y = problem.test_x[:, 0].numpy(), problem.test_y[:, 0].numpy()
        self.outputs, self.titles = [], []
        for i in range(len(learners)):
            ax = self.fig.add_subplot(rows, cols, i + 1)
            ax.plot(test_x, test_y, color="black", linewidth=1.0, linestyle="--")
            self.outputs.append(ax.plot(test_x, np.zeros_like(test_x), color=OUTPUT_COLOUR, linewidth=1.6)[0])
            ax.set_xlim(-2.05, 2.05)
            ax.set_ylim(*POLYNOMIAL_YLIM)
            ax.tick_params(labelsize=7, length=2)
            self.titles.append(ax.set_title(" ", fontsize=8.5))
        self.suptitle = self.fig.suptitle(" ")
        self.fig.legend(handles=[Line2D([], [], color="black", linestyle="--", label="target x⁴ − 3x² + x + 1"),
                                 Line2D([], [], color=OUTPUT_COLOUR, linewidth=1.6, label="network output")],
                        loc="outside lower center", ncols=2, frameon=False, fontsize=8)

    @torch.no_grad()
    def update(self, caption: str) -> None:
        for i, learner in enumerate(self.learners):
            self.outputs[i].set_ydata(learner.model.eval()(self.problem.test_x)[:, 0].numpy())
            metrics = learner.history[-1]
            self.titles[i].set_text(f"{learner.label}: MSE {metrics['loss']:.3f} (test {metrics['test_loss']:.3f})")
        self.suptitle.set_text(caption)


# -- the command --------------------------------------------------------------------------------------


def animate_config(cfg: Config, save_dir: Path | str = "save", name: str | None = None,
                   reporter: Reporter | None = None) -> list[Path]:
    """Train ``cfg.animate.hidden``'s networks side by side on a toy problem and animate them learning.

    ``cfg.data.dataset`` must be ``rings`` or ``polynomial``. Creates a run folder in ``save_dir``
    (named ``name`` exactly when given, else ``cfg.name`` with -2, -3 … if taken), saves the config
    there, and writes the animation into its ``animations/`` folder (see the module docstring).
    Returns the written files: the GIF, the MP4 (``format: mp4``), the last frame as PNG, the metrics JSON.
    """
    reporter = reporter or SilentReporter()
    dataset = cfg.data.dataset
    if dataset not in TOY_DATASETS:
        raise UserError(f"interp animate draws the toy problems, but data.dataset is {dataset!r}: use "
                        "-c configs/rings.yaml or -c configs/polynomial.yaml (or --set data.dataset=rings)")
    shapes = [list(hidden) for hidden in cfg.animate.hidden]
    check_shapes(dataset, shapes)

    problem = _problem(cfg)
    input_size = problem.train_x.shape[1]
    learners = []
    for hidden in shapes:
        torch.manual_seed(cfg.seed)  # every architecture starts from the same seed
        model = MLP((input_size,), 1, hidden, cfg.model.activation)
        learners.append(_Learner(hidden, shape_label(input_size, hidden), model, make_optimizer(cfg, model)))

    run, moved = Run.create(Path(save_dir), name or cfg.name, exact=name is not None)
    if moved:
        reporter.notice(moved)
    save_config(cfg, run.config_path)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the nets are tiny: more threads only add synchronisation, and cost several times
    try:
        with reporter.progress("animate", cfg.animate.frames) as advance:
            frames, record = _play(cfg, problem, learners, advance)
    finally:
        torch.set_num_threads(threads)

    started = time.perf_counter()
    stem = run.animations / problem.name
    stem.parent.mkdir(parents=True, exist_ok=True)
    formats = ["gif", "mp4"] if cfg.animate.format == "mp4" else ["gif"]  # the GIF always
    outputs = write_video(frames, stem, cfg.animate.fps, formats)
    last = stem.with_suffix(".png")
    Image.fromarray(frames[-1]).save(last)
    outputs.append(last)
    seconds = record["seconds"]
    seconds["write"] = round(time.perf_counter() - started, 3)
    metrics_path = stem.with_suffix(".json")
    metrics_path.write_text(json.dumps(record, indent=1), encoding="utf-8")
    outputs.append(metrics_path)
    count = len(frames)
    reporter.notice(f"{count} frames: training {seconds['train'] / count:.3f} s and drawing "
                    f"{seconds['render'] / count:.3f} s per frame; writing the files {seconds['write']:.1f} s")
    return outputs


def _play(cfg: Config, problem: _Problem, learners: list[_Learner],
          advance: Callable[[int], None]) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Train and draw every frame; returns the frames and the metrics record (one entry per frame)."""
    figure: _RingsFigure | _PolynomialFigure = (
        _RingsFigure(learners, problem, cfg.model.activation) if problem.classification
        else _PolynomialFigure(learners, problem))
    loss_fn: Callable[[Tensor, Tensor], Tensor] = (
        nn.functional.binary_cross_entropy_with_logits if problem.classification else nn.functional.mse_loss)
    steps = cfg.animate.steps_per_frame
    n, batch_size = len(problem.train_x), cfg.data.batch_size
    steps_per_frame = -(-n // batch_size) if steps is None else steps
    unit = "epoch" if steps is None else "step"
    schedule = _Batches(n, batch_size, steps, torch.Generator().manual_seed(cfg.seed))
    frames: list[np.ndarray] = []
    entries: list[dict[str, Any]] = []
    seconds = {"train": 0.0, "render": 0.0}
    total = cfg.animate.frames
    for frame in range(total):
        started = time.perf_counter()
        if frame:
            for index in schedule.next_frame():
                x, y = problem.train_x[index], problem.train_y[index]
                for learner in learners:  # the same minibatches for every architecture
                    learner.model.train()
                    loss = loss_fn(learner.model(x), y)
                    learner.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    learner.optimizer.step()
        for learner in learners:
            learner.history.append(_measure(learner, problem))
        drawn = time.perf_counter()
        seconds["train"] += drawn - started
        progress = frame * (1 if steps is None else steps)
        when = "untrained" if frame == 0 else f"after {progress} {unit}{'s' if progress > 1 else ''}"
        figure.update(f"{problem.name}, {when}  ·  {cfg.train.optimizer} lr {cfg.train.lr:g}, batch {batch_size}")
        frames.append(figure.grab())
        seconds["render"] += time.perf_counter() - drawn
        entry: dict[str, Any] = {"frame": frame, "step": frame * steps_per_frame}
        if steps is None:
            entry["epoch"] = frame
        entry["models"] = [{"shape": learner.label, **learner.history[-1]} for learner in learners]
        entries.append(entry)
        advance(1)
    record = {
        "dataset": problem.name,
        "architectures": [learner.label for learner in learners],
        "frame_unit": unit,
        "steps_per_frame": steps_per_frame,
        "batch_size": batch_size,
        "fps": cfg.animate.fps,
        "frames": entries,
        "seconds": {key: round(value, 3) for key, value in seconds.items()},
    }
    return frames, record
