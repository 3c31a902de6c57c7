"""What the figures show: fixed colour scales, sizes that do not change between epochs, honest titles."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from conftest import quick_config
from interp.train import fit


def test_confusion_colour_scales_are_fixed_and_empty_cells_blank() -> None:
    import matplotlib.pyplot as plt

    from interp.stages.confusion import draw_confusion

    matrix = np.array([[5, 0, 1], [0, 7, 0], [2, 0, 0]])
    rates = matrix / matrix.sum(axis=1, keepdims=True)
    fig = draw_confusion(matrix, rates, ["a", "b", "c"], 0.75, 3, "images")
    counts, normalized = (ax for ax in fig.axes if ax.images)
    assert counts.images[0].get_clim() == (0, 7)  # the largest class: the same at every epoch
    assert normalized.images[0].get_clim() == (0, 1.0)
    for ax in (counts, normalized):
        assert len([t for t in ax.texts if t.get_text()]) == np.count_nonzero(matrix)  # zero cells are left blank
    assert sorted(t.get_text() for t in counts.texts if t.get_text()) == ["1", "2", "5", "7"]
    plt.close(fig)


def test_weight_titles_give_shape_and_count_and_epoch_0_has_no_comparison() -> None:
    import matplotlib.pyplot as plt

    from interp.stages.weights import draw_weights

    bins = np.linspace(-1, 1, 5)
    panel = {"name": "features.fc1.weight", "shape": [128, 784], "bins": bins, "now": np.ones(4), "before": None,
             "std_now": 0.02, "std_before": None}
    fig = draw_weights([panel], 0)
    ax = fig.axes[0]
    assert "128×784 = 100\u2009352 weights" in ax.get_title()
    assert fig._suptitle.get_text() == "weight distributions at epoch 0 (initialization)"
    assert ax.get_ylabel() == "count" and len(ax.get_yticks()) >= 2
    plt.close(fig)
    later = draw_weights([{**panel, "before": np.ones(4), "std_before": 0.01}], 4)
    assert later._suptitle.get_text() == "weight distributions: epoch 0 (grey) and epoch 4 (blue)"
    plt.close(later)


def test_weight_titles_of_a_deep_conv_net_stay_inside_their_column() -> None:
    """Nine panels of an all-conv net, three to a row: drawn, each panel's title lies inside the figure and
    clear of the titles beside it (a long shape, count and spread on one line ran into the next title and
    past the figure's edge)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from interp.plotting import render
    from interp.stages.weights import draw_weights

    bins = np.linspace(-1, 1, 5)
    panels = [{"name": f"features.conv{i}.0.weight", "shape": [64, 64, 3, 3], "bins": bins, "now": np.ones(4),
               "before": np.ones(4), "std_now": 0.0271, "std_before": 0.0244} for i in range(9)]
    fig = draw_weights(panels, 12)
    render(fig)
    renderer = FigureCanvasAgg(fig).get_renderer()
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes]
    for box in boxes:
        assert box.x0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b)


@pytest.mark.parametrize("long_names", [False, True])
def test_trust_curves_laid_out_by_hand_keep_every_text_inside_and_apart(long_names: bool) -> None:
    """The deletion/insertion figure is placed without a layout engine: once drawn, every title, label,
    tick label and legend lies inside the figure, legends right of the panels (never over a curve), and
    no two texts of different panels overlap — with the usual method names and with very long ones."""
    import matplotlib.pyplot as plt

    from interp.plotting import render
    from interp.stages.trust import draw_curves

    names = ["saliency", "smoothgrad", "integrated_gradients", "edges", "random"]
    if long_names:
        names = [f"{n}_with_a_much_longer_name_than_usual" for n in names]
    x = np.linspace(0, 1, 21)
    lines = [{"name": n, "colour": f"C{i}", "style": "-" if i < 3 else "--", "down": 1 - x, "up": x,
              "scores": (0.123, 0.876)} for i, n in enumerate(names)]
    rows = [{"x": x, "titles": ("deletion: pixels become the black image", "insertion: pixels revealed on it"),
             "xlabels": ("fraction of pixels deleted, most important first", "fraction of pixels inserted"),
             "lines": lines, "score": "AUC"} for _ in range(3)]
    fig = draw_curves(rows, 5, 100)
    size = fig.get_size_inches() * fig.dpi
    assert Image.open(io.BytesIO(render(draw_curves(rows, 5, 100)))).size == tuple(np.round(size))
    for kind in ("svg", "pdf"):  # laid out at each draw, by whatever canvas draws it
        fig.savefig(io.BytesIO(), format=kind)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels = list(fig.axes)
    assert len(panels) == 6
    boxes = []  # (owner, bbox) of every text
    for i, ax in enumerate(panels):
        texts = [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.get_xticklabels(), *ax.get_yticklabels()]
        boxes += [(i, t.get_window_extent(renderer)) for t in texts if t.get_text()]
        legend = ax.get_legend()
        if legend is not None:
            box = legend.get_window_extent(renderer)
            boxes.append((i, box))
            assert all(not box.overlaps(other.get_window_extent(renderer)) for other in panels)
    boxes.append((-1, fig._suptitle.get_window_extent(renderer)))
    for _, box in boxes:
        assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= size[0] + 0.5 and box.y1 <= size[1] + 0.5, box
    for a, (owner_a, box_a) in enumerate(boxes):
        for owner_b, box_b in boxes[a + 1:]:
            if owner_a != owner_b:
                assert not box_a.overlaps(box_b), (owner_a, owner_b)
    plt.close(fig)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    stages = ("analysis.stages=[confusion, {saliency: {smoothgrad_samples: 2}}, {integrated_gradients: {steps: 8}}, "
              "weights, neurons, activations, {embeddings: {points: 200}}]")
    return fit(quick_config("train.epochs=2", "data.train_limit=500", stages),
               save_dir=tmp_path_factory.mktemp("figures")).run_dir


def test_every_figure_keeps_its_size_across_epochs(run: Path) -> None:
    sizes: dict[str, set[tuple[int, int]]] = {}
    for png in sorted(run.glob("epoch_*/*/*.png")):
        with Image.open(png) as image:
            sizes.setdefault(f"{png.parent.name}/{png.name}", set()).add(image.size)
    assert len(sizes) == 7  # every stage drew, at every epoch
    assert {name: len(found) for name, found in sizes.items()} == {name: 1 for name in sizes}, sizes
    assert all(h <= 1100 for found in sizes.values() for _, h in found)  # no taller than TensorBoard shows well


def test_dense_activations_show_every_probe_image_and_the_logits(run: Path) -> None:
    import matplotlib.pyplot as plt
    import torch

    from interp.run import Run
    from interp.stages import STAGES
    from interp.stages.activations import draw_activations
    from interp.train import load_model

    cfg, model, data, _, _ = load_model(Run(run), "last")
    layers = STAGES["activations"]().layers(model)
    assert layers == ["features.fc1", "head"]  # one hidden layer: it, then the classifier's logits
    units = torch.relu(torch.randn(10, 128)).numpy()
    panels = [{"name": "features.fc1", "kind": "units", "values": units, "shape": [128],
               "rows": [str(i) for i in range(10)], "columns": None}]
    fig = draw_activations(np.zeros((1, 28, 28)), "0", panels, 1)
    (ax,) = (a for a in fig.axes if a.images and a.get_ylabel())
    assert ax.images[0].get_array().shape == (10, 128)
    assert [t.get_text() for t in ax.get_yticklabels()] == [str(i) for i in range(10)]
    plt.close(fig)


def test_principal_components_equal_scikit_learns_pca() -> None:
    """The embeddings figure's PCA (numpy): the projections, their signs and the variance shares equal
    scikit-learn's exact PCA; a single feature gives one component and an all-zero second one."""
    from sklearn.decomposition import PCA

    from interp.stages.embeddings import principal_components

    rng = np.random.default_rng(0)
    for rows, cols in ((1000, 128), (60, 10), (25, 2)):
        features = (rng.standard_normal((rows, cols)) * np.linspace(3, 0.1, cols)).astype(np.float32)
        points, share = principal_components(features, 2)
        reference = PCA(n_components=2, svd_solver="full").fit(features.astype(np.float64))
        assert np.allclose(points, reference.transform(features.astype(np.float64)), atol=1e-9)
        assert np.allclose(share, reference.explained_variance_ratio_, atol=1e-12)
    line = np.arange(10.0)[:, None]
    points, share = principal_components(line, 2)
    assert np.allclose(points[:, 0], line[:, 0] - 4.5) and not points[:, 1].any()
    assert share.tolist() == [1.0, 0.0]


def test_tsne_map_runs_the_iterations_asked_and_keeps_the_neighbours() -> None:
    """The embeddings figure's t-SNE: scikit-learn's, run for the iterations asked (500 by default, half
    its own default); on 500 points in 10 clusters it keeps each point's neighbours about as well as 1,000
    iterations do and sits at nearly the same KL divergence."""
    from sklearn.manifold import TSNE, trustworthiness

    from interp.stages.embeddings import EmbeddingsOptions, tsne_map

    assert EmbeddingsOptions().tsne_iterations == 500
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((10, 64)) * 3
    features = (centres[np.arange(500) % 10] + rng.standard_normal((500, 64))).astype(np.float32)
    short = tsne_map(features, 30.0, 500)
    assert short.shape == (500, 2) and np.isfinite(short).all()
    steps = "max_iter" if "max_iter" in TSNE().get_params() else "n_iter"
    full = TSNE(n_components=2, perplexity=30.0, init="pca", random_state=0, **{steps: 1000})
    full_map = full.fit_transform(features)
    assert full.n_iter_ >= 999  # the reference really ran longer
    assert trustworthiness(features, short, n_neighbors=10) >= trustworthiness(features, full_map, n_neighbors=10) - 0.01
    assert np.allclose(tsne_map(features, 30.0, 500), short)  # seeded
    with pytest.raises(ValueError, match="tsne_iterations"):
        EmbeddingsOptions(tsne_iterations=100)


def _bars(values: list[float], title: str, label: str = "count") -> Any:
    """A constrained-layout figure of two panels and a colour bar; the first panel's y label ``label``."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(6, 3), layout="constrained")
    axes[0].bar(range(len(values)), values)
    axes[0].set_ylabel(label)
    image = axes[1].imshow(np.outer(values, values))
    fig.colorbar(image, ax=axes[1], label="product")
    axes[1].set_title(title)
    fig.suptitle("a figure drawn at every epoch")
    return fig


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_render_draws_like_savefig() -> None:
    """One pass of the renderer (the layout inside it) gives the pixels matplotlib's savefig gives with
    its two passes, for a constrained figure and a hand-placed one."""
    import matplotlib.pyplot as plt

    from interp import plotting

    for make in (lambda: _bars([3, 1, 2], "epoch 4"), _placed):
        fig = make()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", facecolor="white")
        plt.close(fig)
        assert np.array_equal(_pixels(plotting.render(make())), _pixels(buffer.getvalue()))


def _placed() -> Any:
    from interp.plotting import fixed_layout_figure

    fig = fixed_layout_figure(4, 3)
    ax = fig.add_axes((0.15, 0.15, 0.8, 0.7))
    ax.plot([0, 1, 2], [2, 0, 1], label="a line")
    ax.legend()
    ax.set_title("placed by hand")
    return fig


def test_a_confusion_figure_updated_in_place_draws_like_a_new_one() -> None:
    """The drawing worker keeps the last confusion figure and writes the next epoch's numbers into it: the
    PNG is pixel for pixel the one a newly built figure gives (cells that became empty blank, colours of
    the numbers, the title); other classes or another colour scale build a new figure."""
    from interp.analysis import drawing
    from interp.stages.confusion import draw_confusion

    classes = [str(i) for i in range(4)]
    rng = np.random.default_rng(0)
    epochs = []
    for epoch in range(3):
        matrix = rng.integers(0, 6, (4, 4)) * (rng.random((4, 4)) < 0.5)
        np.fill_diagonal(matrix, 0)
        np.fill_diagonal(matrix, 20 - matrix.sum(axis=1))  # 20 images per class, every epoch
        epochs.append((matrix, matrix / 20, classes, float(np.trace(matrix)) / 80, epoch, "images"))
    memory = drawing.DrawingMemory()
    for args in epochs:
        updated = drawing.render_job((draw_confusion, args), memory)
        assert memory.figures  # kept for the next epoch
        memory.figures.clear()
        built = drawing.render_job((draw_confusion, args), memory)
        assert np.array_equal(_pixels(updated), _pixels(built))
    kept = memory.figures.popitem()[1][0]
    other = epochs[0][0].copy()
    other[0, 0] += 5  # a larger class: another colour scale
    assert not draw_confusion.update(kept, other, other / 25, classes, 0.5, 3, "images")
    assert not draw_confusion.update(kept, *epochs[0][:2], list("abcd"), 0.5, 3, "images")
    assert draw_confusion.update(kept, *epochs[1])


def _curve_rows(rng: np.random.Generator, road: bool) -> list[dict[str, Any]]:
    x = np.linspace(0, 1, 11)
    lines = [{"name": n, "colour": f"C{i}", "style": "-" if i < 2 else ":", "down": rng.random(11), "up": rng.random(11),
              "scores": tuple(rng.random(2))} for i, n in enumerate(["saliency", "integrated_gradients", "random"])]
    rows: list[dict[str, Any]] = [{"x": x, "titles": ("deletion", "insertion"), "xlabels": ("deleted", "inserted"),
                                   "lines": lines, "score": "AUC"}]
    if road:
        rows.append({"x": x[1:-1:2], "titles": ("MoRF", "LeRF"), "xlabels": ("removed", "removed"), "score": "mean",
                     "lines": [{**line, "down": rng.random(5), "up": rng.random(5)} for line in lines]})
    else:
        rows.append({"titles": ("MoRF", "LeRF"), "note": "at the last epoch"})
    return rows


def test_trust_curves_updated_in_place_draw_like_new_ones() -> None:
    """The deletion/insertion figure kept by the drawing worker and given the next epoch's curves and
    scores is pixel for pixel a newly built one; the last epoch's, whose ROAD row is filled, is built anew."""
    from interp.analysis import drawing
    from interp.stages.trust import draw_curves

    rng = np.random.default_rng(1)
    memory = drawing.DrawingMemory()
    for epoch, road in ((0, False), (1, False), (2, False), (3, True)):
        rows = _curve_rows(rng, road)
        kept = next(iter(memory.figures.values()), (None,))[0]
        updated = drawing.render_job((draw_curves, (rows, epoch, 50)), memory)
        assert (next(iter(memory.figures.values()))[0] is kept) == (epoch in (1, 2))  # updated, not built anew
        memory.figures.clear()
        built = drawing.render_job((draw_curves, (rows, epoch, 50)), memory)
        assert np.array_equal(_pixels(updated), _pixels(built))


def test_a_sheet_title_breaks_where_it_says_and_wraps_the_rest() -> None:
    """TileSheet.png: a newline in the title starts a line (the integrated-gradients sheet puts its
    completeness errors on their own line), and each part still wraps to the sheet's width; every title
    line adds the same height and the panels are drawn below them unchanged."""
    import io

    from PIL import Image

    from interp.plotting import TileSheet

    def drawn(title: str) -> np.ndarray:
        sheet = TileSheet(1, 2, (28, 28))
        for c in range(2):
            sheet.put(0, c, np.full((28, 28, 3), 128, dtype=np.uint8), f"panel {c}")
        return np.asarray(Image.open(io.BytesIO(sheet.png(title))).convert("L"))

    one = drawn("short title")
    two = drawn("short title\nsecond line")
    wrapped = drawn("word " * 40 + "\nlast line")
    assert two.shape[0] - one.shape[0] == 16 and two.shape[1] == one.shape[1]
    assert wrapped.shape[0] - one.shape[0] > 16  # the long part wrapped to more than one line
    assert np.array_equal(two[16:][-100:], one[-100:])  # the panels, moved down by one line

    def rows_with_ink(image: np.ndarray) -> list[int]:
        top = image[:60]
        return [int(r) for r in np.flatnonzero((top < 128).any(axis=1))]

    lines = rows_with_ink(two)
    assert lines and max(lines) - min(lines) > 16  # text on two lines at the top


def test_the_neurons_sheet_shows_every_weight_in_its_colour() -> None:
    """draw_neurons: the mosaic of first-layer tiles, each weight a zoom × zoom square of exactly the colour
    the diverging scale gives it (one scale, ± the largest |w|, grey borders), the longer side about
    1,000 px, and the same size at every epoch."""
    import io

    from PIL import Image

    from interp.plotting import SIGNED_CMAP, TileSheet, to_rgb
    from interp.stages.neurons import draw_neurons, neuron_grid

    rng = np.random.default_rng(0)
    tiles = rng.normal(0, 0.05, (128, 28, 28))
    png = draw_neurons(tiles, None, 128, "hidden units", 5)
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    grid, limit = neuron_grid(tiles)
    assert limit == pytest.approx(np.abs(tiles).max())
    zoom = round(1000 / max(grid.shape))
    sheet = TileSheet(1, 1, grid.shape, zoom=zoom, bars=True)  # where the panel lies
    top, left = sheet.TOP + sheet.TITLE, sheet.lefts[0]
    panel = image[top:top + grid.shape[0] * zoom, left:left + grid.shape[1] * zoom]
    expected = np.repeat(np.repeat(to_rgb(grid, SIGNED_CMAP, -limit, limit), zoom, axis=0), zoom, axis=1)
    assert np.array_equal(panel, expected)
    assert 950 <= max(panel.shape[:2]) <= 1050
    later = np.asarray(Image.open(io.BytesIO(draw_neurons(tiles * 3, None, 128, "hidden units", 6))))
    assert later.shape[:2] == image.shape[:2]


def _fixed_title_figures(rng: np.random.Generator) -> dict[str, tuple[Any, tuple[Any, ...]]]:
    from interp.stages.activations import draw_activations
    from interp.stages.confusion import draw_confusion
    from interp.stages.embeddings import draw_embeddings
    from interp.stages.trust import MEASURE_TITLES, draw_curves, draw_randomization

    matrix = rng.integers(0, 30, (10, 10))
    classes = [str(i) for i in range(10)]
    panels = [{"name": "features.conv1", "kind": "maps", "values": rng.random((8, 6, 6)), "shape": [8, 6, 6],
               "channels": 8},
              {"name": "features.fc1", "kind": "units", "values": rng.random((10, 40)) * 3e4, "shape": [40],
               "rows": classes, "columns": None},
              {"name": "head", "kind": "units", "values": rng.normal(size=(10, 10)), "shape": [10], "rows": classes,
               "columns": classes}]
    features, labels = rng.normal(size=(200, 16)) * 1e4, rng.integers(0, 10, 200)
    layers = ["head", "features.fc1"]
    similarities = {name: {m: list(rng.random(3)) for m in MEASURE_TITLES} for name in ("saliency", "edges")}
    return {"confusion": (draw_confusion, (matrix, matrix / matrix.sum(axis=1, keepdims=True), classes, 0.5, 1, "images")),
            "activations": (draw_activations, (rng.random((28, 28, 3)), "7", panels, 1)),
            "embeddings": (draw_embeddings, (features, labels, (labels + (rng.random(200) < 0.2)) % 10, classes, 1,
                                             None, "drawn at the last epoch")),
            "curves": (draw_curves, (_curve_rows(rng, True), 5, 50)),
            "randomization": (draw_randomization, (layers, similarities, {"saliency": "C0", "edges": "0.35"}, 5, 20))}


@pytest.mark.parametrize("name", ["confusion", "activations", "embeddings", "curves", "randomization"])
def test_titles_fixed_above_their_panels_are_where_matplotlib_would_put_them(name: str, monkeypatch) -> None:
    """The figures that skip matplotlib's title placement (it measures every tick label at each draw to
    find what sits above a panel) draw pixel for pixel as they do with it, large numbers on the axes
    included: nothing but the title is ever above their panels."""
    import contextlib

    from interp import plotting
    from interp.plotting import render

    function, args = _fixed_title_figures(np.random.default_rng(2))[name]
    fig = function(*args)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert titled and all(ax.title.get_position()[1] == 1.0 for ax in titled)
    fixed = render(fig)
    monkeypatch.setattr(plotting, "fixed_title_position", contextlib.nullcontext)  # matplotlib places them
    placed = render(function(*args))
    assert np.array_equal(_pixels(fixed), _pixels(placed))


@pytest.mark.parametrize("conv", [False, True])
def test_activations_updated_in_place_draw_like_new_ones(conv: bool) -> None:
    """The activations figure kept by the drawing worker and given the next epoch's values (other colour
    limits, so other colour-bar ticks) is pixel for pixel a newly built one; other layers build anew."""
    from interp.analysis import drawing
    from interp.stages.activations import draw_activations

    rng = np.random.default_rng(3)
    classes = [str(i) for i in range(10)]

    def panels(scale: float) -> list[dict[str, Any]]:
        head = {"name": "head", "kind": "units", "values": rng.normal(size=(10, 10)) * scale, "shape": [10],
                "rows": classes, "columns": classes}
        if conv:
            return [{"name": "features.conv3", "kind": "maps", "values": rng.random((12, 7, 7)) * scale,
                     "shape": [16, 7, 7], "channels": 16}, head]
        return [{"name": "features.fc1", "kind": "units", "values": rng.random((10, 64)) * scale, "shape": [64],
                 "rows": classes, "columns": None}, head]

    pixels = rng.random((28, 28, 3))
    memory = drawing.DrawingMemory()
    for epoch, (scale, shift) in enumerate(((1.0, 0.0), (40.0, 0.0), (0.02, 0.0), (1.0, 1e4), (1.0, -1e4))):
        args = (pixels, "7", [{**p, "values": p["values"] + shift} for p in panels(scale)], epoch)  # apart too
        kept = next(iter(memory.figures.values()), (None,))[0]
        updated = drawing.render_job((draw_activations, args), memory)
        assert (next(iter(memory.figures.values()))[0] is kept) == (epoch > 0)  # updated, not built anew
        memory.figures.clear()
        built = drawing.render_job((draw_activations, args), memory)
        assert np.array_equal(_pixels(updated), _pixels(built))
    kept = memory.figures.popitem()[1][0]
    other = panels(1.0)
    other[0]["name"] = "features.other"
    assert not draw_activations.update(kept, pixels, "7", other, 3)
    assert not draw_activations.update(kept, pixels, "1", panels(1.0), 3)


def test_embeddings_updated_in_place_draw_like_new_ones() -> None:
    """The PCA-only embeddings figure kept by the drawing worker and given the next epoch's features (other
    limits, other misclassified points and count) is pixel for pixel a newly built one; the last epoch's,
    with its t-SNE, and one whose rings appear are built anew."""
    from interp.analysis import drawing
    from interp.stages.embeddings import draw_embeddings

    rng = np.random.default_rng(4)
    names = [f"class {i}" for i in range(5)]
    labels = rng.integers(0, 5, 120)
    memory = drawing.DrawingMemory()
    why = "drawn at the last epoch"
    for epoch, (scale, wrong, tsne) in enumerate(((1.0, 0.1, None), (30.0, 0.3, None), (0.01, 0.05, None),
                                                  (2.0, 0.8, None), (1.0, 0.1, 30.0))):
        predicted = np.where(rng.random(120) < wrong, (labels + 1) % 5, labels)
        features = rng.normal(size=(120, 8)) * scale + labels[:, None]
        args = (features, labels, predicted, names, epoch, tsne, why if tsne is None else None, 100, 250)
        kept = next(iter(memory.figures.values()), (None,))[0]
        updated = drawing.render_job((draw_embeddings, args), memory)
        assert (next(iter(memory.figures.values()))[0] is kept) == (epoch in (1, 2))  # updated, not built anew
        memory.figures.clear()
        built = drawing.render_job((draw_embeddings, args), memory)
        assert np.array_equal(_pixels(updated), _pixels(built))
