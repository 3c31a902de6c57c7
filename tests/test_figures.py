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
    from interp.stages.confusion import confusion_panels, draw_confusion

    matrix = np.array([[5, 0, 1], [0, 7, 0], [2, 0, 0]])
    rates = matrix / matrix.sum(axis=1, keepdims=True)
    (counts, top, texts), (_, rate_top, rate_texts) = confusion_panels(matrix, rates)
    assert top == 7 and rate_top == 1.0  # the largest class (the same at every epoch); rates 0 to 1
    for shown in (texts, rate_texts):
        assert (shown != "").sum() == np.count_nonzero(matrix)  # zero cells are left blank
    assert sorted(texts[texts != ""]) == ["1", "2", "5", "7"]
    assert rate_texts[2, 0] == "1.00" and rate_texts[0, 2] == "0.17"
    with Image.open(io.BytesIO(draw_confusion(matrix, rates, ["a", "b", "c"], 0.75, 3, "images"))) as image:
        pixels = np.asarray(image.convert("RGB"))
    from interp.plotting import to_rgb

    darkest = to_rgb(np.array([[7.0]]), "Blues", 0, 7)[0, 0]  # the count 7 sits at the top of the scale
    assert (pixels.reshape(-1, 3) == darkest).all(axis=1).sum() > 100


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
def test_trust_curves_keep_every_text_inside_and_apart(long_names: bool) -> None:
    """Once the deletion/insertion figure is drawn, every title, label, tick label and legend lies inside
    it, legends right of the panels (never over a curve), and no two texts of different panels overlap —
    with the usual method names and with very long ones."""

    from interp.plotting import render, style
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
    with style():
        fig = draw_curves(rows, 5, 100)
        size = fig.get_size_inches() * fig.dpi
        assert Image.open(io.BytesIO(render(draw_curves(rows, 5, 100)))).size == tuple(np.round(size))
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        panels = list(fig.axes)
        assert len(panels) == 6
        boxes = []  # (owner, bbox) of every text
        for i, ax in enumerate(panels):
            low, high = ax.get_ylim()  # tick labels drawn (those of ticks in view)
            texts = [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.get_xticklabels(),
                     *[t for t in ax.get_yticklabels() if low <= t.get_position()[1] <= high]]
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
    import interp
    from interp.plotting import to_rgb
    from interp.stages.activations import PANEL, draw_activations

    record = interp.load_record(run, "activations", 2)
    panels = record.figures["activations"]["fields"]["panels"]
    assert [p["name"] for p in panels] == ["features.fc1", "head"]  # one hidden layer, then the logits
    assert np.shape(panels[0]["values"]) == (10, 128) and np.shape(panels[1]["values"]) == (10, 10)
    assert panels[0]["rows"] == [str(i) for i in range(10)]  # every probe image, one per class
    assert panels[1]["columns"] == [str(i) for i in range(10)] and panels[0]["columns"] is None
    # drawn: each unit a block of the panel, the largest activation at the colour map's top
    units = np.zeros((10, 128))
    units[3, 7] = 2.0
    png = draw_activations(np.zeros((1, 28, 28)), "0", [{**panels[0], "values": units}], 1)
    with Image.open(io.BytesIO(png)) as image:
        pixels = np.asarray(image.convert("RGB"))
    top = to_rgb(np.array([[2.0]]), "viridis", 0, 2)[0, 0]
    block = (pixels.reshape(-1, 3) == top).all(axis=1).sum()
    assert (PANEL // 10) * (PANEL // 128) <= block <= (PANEL // 10 + 1) * (PANEL // 128 + 1) + 9 * 3  # + colour bar end


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
    its two passes."""
    from interp import plotting

    with plotting.style():
        fig = _bars([3, 1, 2], "epoch 4")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", facecolor="white")
        assert np.array_equal(_pixels(plotting.render(_bars([3, 1, 2], "epoch 4"))), _pixels(buffer.getvalue()))


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


def test_drawing_leaves_matplotlib_and_tensorboard_as_the_caller_set_them(tmp_path: Path) -> None:
    """A notebook's matplotlib settings, backend and open figures, and TensorBoard's own checksum function,
    are the same after interp draws figures and writes events as before (interp sets nothing global)."""
    import matplotlib
    import matplotlib.pyplot as plt
    from tensorboard.summary.writer import record_writer

    import interp

    checksum = record_writer.masked_crc32c
    mine = plt.figure()
    with matplotlib.rc_context({"font.size": 17.0, "image.cmap": "plasma"}):
        before = dict(matplotlib.rcParams)
        backend = matplotlib.get_backend()
        import interp.plotting  # noqa: F401
        from interp.stages.confusion import draw_confusion

        draw_confusion(np.eye(3, dtype=int), np.eye(3), ["a", "b", "c"], 1.0, 0, "images")
        run = fit(quick_config("train.epochs=1", "data.train_limit=200", "analysis.drawing_worker=false",
                               "analysis.stages=[confusion, weights, neurons, activations]"),
                  save_dir=tmp_path).run_dir
        assert interp.load_record(run, "weights", 1).figures["weights"]["view"].endswith("draw_weights")
        assert dict(matplotlib.rcParams) == before and matplotlib.get_backend() == backend
    assert plt.fignum_exists(mine.number)  # drawing closed no figure of the caller's
    assert record_writer.masked_crc32c is checksum
    plt.close(mine)
