"""The matplotlib figures of ``interp animate``: per architecture, the input plane above the hidden space
(rings) or the target curve and the network's output (polynomial), built once and updated every frame."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import numpy as np
import torch
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.legend_handler import HandlerTuple
from matplotlib.lines import Line2D
from matplotlib.transforms import Transform, blended_transform_factory

from ..data import toy
from .geometry import decision_line, grid_lines, warp_grid
from .learners import Learner, Problem

__all__ = ["CAPTION_SEPARATOR", "INPUT_VIEW", "PolynomialFigure", "RingsFigure", "polynomial_ylim"]

INPUT_VIEW = 1.3  # the input-plane panel shows [−1.3, 1.3]²
PROBABILITY_PIXELS = 120  # the probability images are this many pixels square
POLYNOMIAL_XLIM = (-2.05, 2.05)  # the data lie on [−2, 2]
POLYNOMIAL_MARGIN = 0.08  # the y range is the target's (about −2.5 … 7 on [−2, 2]) and 8 % of it either side
DPI = 90
EDGE_PAD = 6  # pixels kept free between the legend or the caption and the figure's sides
CAPTION_SEPARATOR = "  ·  "  # a caption too wide for one line is broken here
CLASS_COLOURS = ("#1d3f8f", "#b0151f")  # inner ring (label 0), outer ring (label 1)
OUTPUT_COLOUR = "#d62728"
# Probability of the outer ring: pale blue (0) → white (0.5) → pale red (1), so the points stay visible.
PROBABILITY_CMAP = LinearSegmentedColormap.from_list("ring_probability", ["#9db7e6", "#ffffff", "#eda1a1"])


class _Figure:
    """A figure whose artists are built once; :meth:`update` changes their data and :meth:`grab` draws.

    Before the first frame, :meth:`_add_legend` and :meth:`fit_caption` size the figure so that the legend
    and the longest caption fit inside it; from the first frame on its size and layout stay fixed."""

    def __init__(self, width: float, height: float) -> None:
        self.fig = Figure(figsize=(width, height), dpi=DPI, facecolor="white", layout="constrained")
        self.canvas = FigureCanvasAgg(self.fig)
        self._layout_fixed = False
        self.suptitle = self.fig.suptitle(" ")
        self._wrap_caption = False

    def grab(self) -> np.ndarray:
        """Draw the figure and return its pixels (H, W, 3) uint8."""
        self.canvas.draw()
        if not self._layout_fixed:  # lay out once, on the first frame; later frames keep the positions
            self.fig.set_layout_engine("none")
            self._layout_fixed = True
        return np.asarray(self.canvas.buffer_rgba())[..., :3].copy()

    def _room(self) -> float:
        """The width in pixels that a centred line of text may take."""
        return float(self.fig.bbox.width) - 2 * EDGE_PAD

    def _grow(self, width: float = 0.0, height: float = 0.0) -> None:
        """Make the figure ``width`` and ``height`` pixels larger (before the first frame only)."""
        if self._layout_fixed:
            raise RuntimeError("the figure's size is fixed once the first frame is drawn")
        inches = self.fig.get_size_inches()
        self.fig.set_size_inches(inches[0] + width / DPI, inches[1] + height / DPI)

    def _add_legend(self, handles: Sequence[Artist | tuple[Artist, ...]], labels: Sequence[str],
                    fontsize: float = 8) -> Legend:
        """The figure's legend below the panels, in as few rows as fit the figure's width. The figure's
        size allows one row: it grows by the height of every further row, so that the panels keep their
        size, and it widens if even one column is too wide."""
        renderer = self.canvas.get_renderer()
        count = len(labels)
        one_row = 0.0
        legend = None
        for cols in sorted({math.ceil(count / rows) for rows in range(1, count + 1)}, reverse=True):
            legend = self.fig.legend(handles=list(handles), labels=list(labels), loc="outside lower center",
                                     ncols=cols, frameon=False, fontsize=fontsize,
                                     handler_map={tuple: HandlerTuple(ndivide=None)})
            box = legend.get_window_extent(renderer)
            one_row = one_row or float(box.height)
            if box.width <= self._room() or cols == 1:
                break
            legend.remove()
        assert legend is not None
        box = legend.get_window_extent(renderer)
        self._grow(width=max(0.0, float(box.width) - self._room()), height=float(box.height) - one_row)
        return legend

    def fit_caption(self, captions: Sequence[str]) -> None:
        """Prepare for the captions the frames will have: one that does not fit the figure's width on one
        line is broken into lines at ``CAPTION_SEPARATOR``, and then every caption is, so that the layout
        (fixed on the first frame) holds for them all; the figure grows by the added lines' height and
        widens if a line is still too wide."""
        renderer = self.canvas.get_renderer()
        text = self.suptitle.get_text()
        samples = sorted({re.sub(r"\d", "0", caption) for caption in captions})  # digits are equally wide

        def widest(wrap: bool) -> tuple[float, float]:
            sizes = []
            for sample in samples:
                self.suptitle.set_text(_wrapped(sample) if wrap else sample)
                box = self.suptitle.get_window_extent(renderer)
                sizes.append((float(box.width), float(box.height)))
            return max(width for width, _ in sizes), max(height for _, height in sizes)

        width, height = widest(False)
        self._wrap_caption = width > self._room()
        if self._wrap_caption:
            wrapped_width, wrapped_height = widest(True)
            self._grow(width=max(0.0, wrapped_width - self._room()), height=wrapped_height - height)
        self.suptitle.set_text(text)

    def _caption(self, caption: str) -> None:
        self.suptitle.set_text(_wrapped(caption) if self._wrap_caption else caption)


def _wrapped(caption: str) -> str:
    return "\n".join(caption.split(CAPTION_SEPARATOR))


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
        handles = [Line2D([], [], linestyle="", marker="o", markersize=4, color=colour) for colour in CLASS_COLOURS]
        handles += [Line2D([], [], color="black", linestyle="--"), Line2D([], [], color="#555555", linewidth=0.8)]
        self._add_legend(handles, [*toy.RING_CLASSES, "decision line (p = 0.5)", "grid of [−1, 1]² warped"])

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
        self._caption(caption)


def _limits(points: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    low, high = np.percentile(points, [0.5, 99.5], axis=0)
    centre, half = (low + high) / 2, max(float((high - low).max()) / 2, 1e-3) * 1.08
    return (centre[0] - half, centre[0] + half), (centre[1] - half, centre[1] + half)


class PolynomialFigure(_Figure):
    """Per architecture, the target curve and the network's output on the test points.

    The y range is the target's with a margin, the same in every frame. Where the output leaves it, its
    line is cut at the edge, a triangle at the edge marks each stretch outside (▲ above, ▼ below) and the
    panel says how far the output goes."""

    def __init__(self, learners: list[Learner], problem: Problem) -> None:
        rows, cols = _grid(len(learners), 3)
        super().__init__(cols * 3.0 + 0.3, rows * 2.45 + 0.5)
        self.learners, self.problem = learners, problem
        test_x, test_y = problem.test_x[:, 0].numpy(), problem.test_y[:, 0].numpy()
        self.test_x = test_x
        self.ylim = polynomial_ylim(test_y)
        self.outputs, self.titles, self.notes = [], [], []
        self.above: list[Line2D] = []
        self.below: list[Line2D] = []
        for i in range(len(learners)):
            ax = self.fig.add_subplot(rows, cols, i + 1)
            ax.plot(test_x, test_y, color="black", linewidth=1.0, linestyle="--")
            self.outputs.append(ax.plot(test_x, np.zeros_like(test_x), color=OUTPUT_COLOUR, linewidth=1.6)[0])
            edge = blended_transform_factory(ax.transData, ax.transAxes)  # x in data, y in the axes' fraction
            self.above.append(ax.add_line(_edge_marker("^", edge)))
            self.below.append(ax.add_line(_edge_marker("v", edge)))
            self.notes.append(ax.text(0.5, 0.97, "", transform=ax.transAxes, ha="center", va="top", fontsize=7,
                                      color=OUTPUT_COLOUR, zorder=6,
                                      bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "alpha": 0.8,
                                            "edgecolor": "none"}))
            for artist in (self.above[-1], self.below[-1], self.notes[-1]):
                artist.set_in_layout(False)  # inside the axes; when empty, the layout would count them at (0, 0)
            ax.set_xlim(*POLYNOMIAL_XLIM)
            ax.set_ylim(*self.ylim)
            ax.tick_params(labelsize=7, length=2)
            self.titles.append(ax.set_title(" ", fontsize=8.5))
        beyond = (_edge_marker("^"), _edge_marker("v"))
        self._add_legend([Line2D([], [], color="black", linestyle="--"),
                          Line2D([], [], color=OUTPUT_COLOUR, linewidth=1.6), beyond],
                         ["target x⁴ − 3x² + x + 1", "network output", "output above / below the view"])

    @torch.no_grad()
    def update(self, caption: str) -> None:
        low, high = self.ylim
        for i, learner in enumerate(self.learners):
            output = learner.model.eval()(self.problem.test_x)[:, 0].numpy()
            self.outputs[i].set_ydata(output)
            over, under = _stretches(output > high, output, np.argmax), _stretches(output < low, output, np.argmin)
            self.above[i].set_data(self.test_x[over], np.full(len(over), 0.975))
            self.below[i].set_data(self.test_x[under], np.full(len(under), 0.025))
            beyond = ([f"up to {_number(output.max())}"] if len(over) else []) + (
                [f"down to {_number(output.min())}"] if len(under) else [])
            self.notes[i].set_text(f"output {' and '.join(beyond)}, off the view" if beyond else "")
            metrics = learner.history[-1]
            self.titles[i].set_text(f"{learner.label}: MSE {metrics['loss']:.3f} (test {metrics['test_loss']:.3f})")
        self._caption(caption)


def _number(value: float) -> str:
    return f"{value:.3g}".replace("-", "−")  # the minus sign of the tick labels


def _edge_marker(marker: str, transform: Transform | None = None) -> Line2D:
    """Triangles that mark where the network's output leaves the view."""
    line = Line2D([], [], linestyle="", marker=marker, markersize=6, color=OUTPUT_COLOUR, markeredgecolor="white",
                  markeredgewidth=0.6, zorder=5, clip_on=False)
    if transform is not None:
        line.set_transform(transform)
    return line


def polynomial_ylim(target: np.ndarray) -> tuple[float, float]:
    """The y range of the polynomial panels: the target's, and ``POLYNOMIAL_MARGIN`` of it either side."""
    low, high = float(np.min(target)), float(np.max(target))
    margin = POLYNOMIAL_MARGIN * max(high - low, 1e-3)
    return low - margin, high + margin


def _stretches(outside: np.ndarray, values: np.ndarray, pick: Callable[[np.ndarray], np.intp]) -> np.ndarray:
    """The index of one point per stretch of consecutive ``outside`` points: the one ``pick`` (np.argmax or
    np.argmin) chooses among its ``values``."""
    if not outside.any():
        return np.zeros(0, dtype=np.intp)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], outside.astype(np.int8), [0]])))
    return np.array([start + int(pick(values[start:stop])) for start, stop in zip(edges[::2], edges[1::2], strict=True)],
                    dtype=np.intp)
