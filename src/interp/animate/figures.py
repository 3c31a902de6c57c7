"""The matplotlib figures of ``interp animate``: per architecture, the input plane above the hidden space
(rings) or the target curve and the network's output (polynomial), built once and updated every frame."""

from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .. import plotting  # noqa: F401  (the Agg backend and the project's font sizes)
from ..data import toy
from .geometry import decision_line, grid_lines, warp_grid
from .learners import Learner, Problem

__all__ = ["INPUT_VIEW", "PolynomialFigure", "RingsFigure"]

INPUT_VIEW = 1.3  # the input-plane panel shows [−1.3, 1.3]²
PROBABILITY_PIXELS = 120  # the probability images are this many pixels square
POLYNOMIAL_YLIM = (-2.5, 7.5)  # the target spans about −1.4 … 7 on [−2, 2]
DPI = 90
CLASS_COLOURS = ("#1d3f8f", "#b0151f")  # inner ring (label 0), outer ring (label 1)
OUTPUT_COLOUR = "#d62728"
# Probability of the outer ring: pale blue (0) → white (0.5) → pale red (1), so the points stay visible.
PROBABILITY_CMAP = LinearSegmentedColormap.from_list("ring_probability", ["#9db7e6", "#ffffff", "#eda1a1"])


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


class RingsFigure(_Figure):
    """Per architecture, the input plane above the 2-unit hidden space."""

    def __init__(self, learners: list[Learner], problem: Problem, activation: str) -> None:
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


class PolynomialFigure(_Figure):
    """Per architecture, the target curve and the network's output on the test points."""

    def __init__(self, learners: list[Learner], problem: Problem) -> None:
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
