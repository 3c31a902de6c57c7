"""Figure helpers: the Agg backend, one render per figure, tile mosaics, colour maps centred at zero."""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Hashable
from typing import Any, NamedTuple

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.layout_engine import ConstrainedLayoutEngine, PlaceHolderLayoutEngine  # noqa: E402
from PIL import Image  # noqa: E402

__all__ = [
    "SIGNED_CMAP",
    "UNSIGNED_CMAP",
    "figure",
    "fixed_layout_figure",
    "grid_shape",
    "mosaic",
    "TileSheet",
    "grey_rgb",
    "overlay_rgb",
    "per_image_sheet",
    "signed_rgb",
    "unsigned_rgb",
    "render",
    "show_image",
    "symmetric_limit",
    "to_rgb",
]

SIGNED_CMAP = "RdBu_r"  # red = positive, blue = negative, white = 0
UNSIGNED_CMAP = "inferno"
BORDER_COLOUR = (0.82, 0.82, 0.82)

plt.rcParams.update({
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "font.size": 9,
    "axes.titlesize": 9,
    "figure.titlesize": 11,
    "image.interpolation": "nearest",
})


def figure(rows: int = 1, cols: int = 1, panel: float = 1.7, squeeze: bool = False,
           **kwargs: object) -> tuple[Figure, np.ndarray]:
    """A figure of ``rows × cols`` panels, each about ``panel`` inches square, laid out tightly."""
    fig, axes = plt.subplots(rows, cols, figsize=(cols * panel + 0.3, rows * panel + 0.5),  # type: ignore[call-overload]
                             squeeze=squeeze, layout="constrained", **kwargs)
    return fig, axes


def fixed_layout_figure(width: float, height: float) -> Figure:
    """A figure whose caller places every axes itself (``fig.add_axes`` / ``set_position``): :func:`render`
    draws it at exactly this size, with no layout pass and no trimming."""
    fig = plt.figure(figsize=(width, height), layout="none")
    fig.set_layout_engine(PlaceHolderLayoutEngine(True, True))
    return fig


def render(fig: Figure, reuse: Hashable | None = None, layouts: dict[Any, Any] | None = None) -> bytes:
    """Draw ``fig`` into PNG bytes of exactly its size (the same every epoch, so that TensorBoard's step
    slider does not jump); constrained layout keeps titles and outside legends inside, and a figure from
    :func:`fixed_layout_figure` is drawn as placed. A figure without a layout engine is trimmed to its
    contents instead. The figure is closed.

    ``reuse``: a name for the kind of figure (e.g. the function that built it), and ``layouts`` the
    caller's dict that keeps the layouts (one per run, so that a figure depends on its run alone). The
    constrained layout of the first figure of a kind is kept there and later ones of the same kind and
    structure are drawn in it, so
    that from epoch to epoch the panels stay where they were in the step slider, and the layout pass (a
    third of a figure's cost) is spared. A figure whose texts would then leave the figure, or touch a
    text or panel they did not touch in the kept layout, is laid out anew, and its layout is kept."""
    try:
        engine = fig.get_layout_engine()
        if engine is None:
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", facecolor="white", pil_kwargs={"compress_level": 1},
                        bbox_inches="tight", pad_inches=0.08)
            return buffer.getvalue()
        if not isinstance(engine, ConstrainedLayoutEngine) or reuse is None or layouts is None or fig.subfigs:
            return _draw(fig)[0]
        key = (reuse, _structure(fig))
        kept = layouts.get(key)
        if kept is not None and kept.touching is not None:  # else it had a text outside: it holds nothing
            png = _draw_in(fig, kept)
            if png is not None:
                return png
        png, texts = _draw(fig, measure=True)
        layouts[key] = _Layout(fig, texts)
        return png
    finally:
        plt.close(fig)


class _Text(NamedTuple):
    owner: int  # the index of the axes it was drawn with in ``fig.axes``; −1: the figure's own (suptitle, legend)
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


_TOUCH = 1.0  # pixels two boxes must share to count as touching


def _draw(fig: Figure, measure: bool = False) -> tuple[bytes, list[_Text]]:
    """One pass of the Agg renderer (the layout engine runs first, inside it), then the PNG; with
    ``measure``, every line of text drawn, with its axes and extent. (``savefig`` would draw the figure
    twice: once, without painting, for a layout that ``Figure.draw`` does anyway.)"""
    canvas = fig.canvas
    if not isinstance(canvas, FigureCanvasAgg):
        canvas = FigureCanvasAgg(fig)
    fig.patch.set_facecolor("white")
    if not measure:
        canvas.draw()
        return _png(canvas), []
    renderer = canvas.get_renderer()
    drawing = [-1]
    lines: list[tuple[int, float, float, str, Any, float, Any]] = []

    def draw_text(gc: Any, x: float, y: float, s: str, prop: Any, angle: float, ismath: Any = False,
                  mtext: Any = None) -> None:
        lines.append((drawing[-1], x, y, s, prop, angle, ismath))
        RendererAgg.draw_text(renderer, gc, x, y, s, prop, angle, ismath, mtext)

    def owned(index: int, draw: Any) -> Any:
        def draw_axes(r: Any) -> None:
            drawing.append(index)
            try:
                draw(r)
            finally:
                drawing.pop()
        return draw_axes

    renderer.draw_text = draw_text  # type: ignore[method-assign]
    for index, ax in enumerate(fig.axes):
        ax.draw = owned(index, ax.draw)  # type: ignore[method-assign]
    try:
        canvas.draw()
    finally:
        del renderer.draw_text
        for ax in fig.axes:
            ax.__dict__.pop("draw", None)
    texts = [_Text(owner, _line_box(renderer, x, y, s, prop, angle, ismath, fig.dpi))
             for owner, x, y, s, prop, angle, ismath in lines]
    return _png(canvas), texts


def _png(canvas: FigureCanvasAgg) -> bytes:
    pixels = canvas.buffer_rgba()
    buffer = io.BytesIO()
    Image.frombuffer("RGBA", (pixels.shape[1], pixels.shape[0]), pixels, "raw", "RGBA", 0, 1).save(
        buffer, format="png", compress_level=1)
    return buffer.getvalue()


def _line_box(renderer: Any, x: float, y: float, s: str, prop: Any, angle: float, ismath: Any,
              dpi: float) -> tuple[float, float, float, float]:
    """The extent (x0, y0, x1, y1, y upwards) of one line of text that the renderer was asked to draw at
    (x, y) (y downwards): from its descent below the baseline to its full height above it, rotated."""
    import matplotlib.text

    measure = getattr(matplotlib.text, "_get_text_metrics_with_cache", None)  # the metrics the draw used
    w, h, d = (measure(renderer, s, prop, ismath, dpi) if measure is not None
               else renderer.get_text_width_height_descent(s, prop, ismath))
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    up = renderer.height - y
    xs = [x + cx * cos - cy * sin for cx in (0.0, w) for cy in (-d, h)]
    ys = [up + cx * sin + cy * cos for cx in (0.0, w) for cy in (-d, h)]
    return min(xs), min(ys), max(xs), max(ys)


_PLACED_TEXTS = ("_suptitle", "_supxlabel", "_supylabel")  # the figure's texts that constrained layout moves


class _Layout:
    """Where constrained layout put a figure's axes and its suptitle, and which of its texts touched another
    owner's text or panel there (none, unless it could not be helped)."""

    def __init__(self, fig: Figure, texts: list[_Text]) -> None:
        self.positions = [ax.get_position(original=True).frozen() for ax in fig.axes]
        self.placed = {name: getattr(fig, name).get_position() for name in _PLACED_TEXTS
                       if getattr(fig, name, None) is not None}
        self.touching = _touching(fig, texts)


def _draw_in(fig: Figure, layout: _Layout) -> bytes | None:
    """``fig`` drawn in a kept layout; None (the figure as it was, ready to be laid out) when a text would
    leave the figure or touch another owner's text or panel that it did not touch in that layout."""
    before_axes = [(ax.get_in_layout(), ax.get_position(original=True).frozen(), ax.get_position().frozen())
                   for ax in fig.axes]
    for ax, position in zip(fig.axes, layout.positions, strict=True):
        ax.set_position(position)
    before = {name: getattr(fig, name).get_position() for name in layout.placed}
    for name, position in layout.placed.items():
        getattr(fig, name).set_position(position)
    engine = fig.get_layout_engine()
    fig.set_layout_engine("none")
    png, texts = _draw(fig, measure=True)
    fig.set_layout_engine(engine)  # a figure updated for the next epoch comes back here, not to _draw alone
    touching = _touching(fig, texts)
    holds = touching is not None and layout.touching is not None and touching <= layout.touching
    for ax, (flag, original, active) in zip(fig.axes, before_axes, strict=True):
        if not holds:  # as built: the layout engine starts from there
            ax.set_position(original, which="original")
            ax.set_position(active, which="active")
        ax.set_in_layout(flag)
    if not holds:
        for name, position in before.items():
            getattr(fig, name).set_position(position)
    return png if holds else None


def _touching(fig: Figure, texts: list[_Text]) -> set[tuple[int, int]] | None:
    """The pairs of owners (axes indices, −1 for the figure) one of whose texts touches a text or the panel
    of the other; None when a text reaches outside the figure."""
    if not texts:
        return set()
    boxes = np.array([text.box for text in texts])
    width, height = fig.bbox.width, fig.bbox.height
    if (boxes[:, :2] < -0.5).any() or (boxes[:, 2] > width + 0.5).any() or (boxes[:, 3] > height + 0.5).any():
        return None
    owners = np.array([text.owner for text in texts])
    panels = np.array([ax.bbox.extents for ax in fig.axes]).reshape(-1, 4)
    every = np.concatenate([boxes, panels])
    whose = np.concatenate([owners, np.arange(len(panels))])
    x0, y0, x1, y1 = boxes.T[:, :, None]
    ex0, ey0, ex1, ey1 = every.T[:, None, :]
    touch = (x0 < ex1 - _TOUCH) & (ex0 < x1 - _TOUCH) & (y0 < ey1 - _TOUCH) & (ey0 < y1 - _TOUCH)
    rows, cols = np.nonzero(touch & (owners[:, None] != whose[None, :]))
    return {(int(min(a, b)), int(max(a, b))) for a, b in zip(owners[rows], whose[cols], strict=True)}


def _structure(fig: Figure) -> tuple[Any, ...]:
    """What must match for one figure to be drawn in another's layout: its size, its axes (kind, label and
    place in the grid) and the figure's own placed texts and legends."""
    def place(ax: Axes) -> Any:
        spec = ax.get_subplotspec()
        return None if spec is None else spec.get_geometry()

    return (tuple(np.round(fig.bbox.size, 1)), tuple((type(ax).__name__, ax.get_label(), place(ax)) for ax in fig.axes),
            tuple(name for name in _PLACED_TEXTS if getattr(fig, name, None) is not None), len(fig.legends))



def grid_shape(n: int, cols: int | None = None) -> tuple[int, int]:
    """(rows, cols) for ``n`` tiles: ``cols`` given, or the most square layout (8×8 for 64)."""
    cols = cols or max(1, math.ceil(math.sqrt(n)))
    return math.ceil(n / cols), cols


def mosaic(tiles: np.ndarray, cols: int | None = None, border: int = 1) -> np.ndarray:
    """Tiles (N, h, w) or (N, h, w, 3) → one image with ``border``-pixel NaN gaps (drawn as thin lines)."""
    n, h, w = tiles.shape[:3]
    rows, cols = grid_shape(n, cols)
    extra = tiles.shape[3:]
    out = np.full((rows * (h + border) + border, cols * (w + border) + border, *extra), np.nan, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = border + r * (h + border), border + c * (w + border)
        out[top:top + h, left:left + w] = tiles[i]
    return out


def symmetric_limit(values: np.ndarray) -> float:
    """Largest absolute finite value (at least a tiny epsilon), for a colour scale centred at zero."""
    finite = np.abs(values[np.isfinite(values)])
    return float(max(finite.max(initial=0.0), 1e-12))


def to_rgb(values: np.ndarray, cmap: str, vmin: float, vmax: float) -> np.ndarray:
    """Map a 2-D array to uint8 RGB with a matplotlib colour map; NaN becomes the border colour."""
    colormap = matplotlib.colormaps[cmap].with_extremes(bad=BORDER_COLOUR)
    scaled = (values - vmin) / max(vmax - vmin, 1e-12)
    return (colormap(np.ma.masked_invalid(scaled))[..., :3] * 255).astype(np.uint8)


def show_image(ax: Axes, pixels: np.ndarray, title: str | None = None) -> None:
    """Draw an image in [0, 1]: (H, W) or (1, H, W) in grey, (3, H, W) or (H, W, 3) in colour."""
    img = np.asarray(pixels)
    if img.ndim == 3 and img.shape[0] in (1, 3):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0)
    else:
        ax.imshow(np.clip(img, 0.0, 1.0))
    _bare(ax, title)


def _bare(ax: Axes, title: str | None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)


# -- tile sheets: many small images in one picture ---------------------------------------------------
#
# A figure with one matplotlib axes per small image costs about 25 ms per axes to build and draw; the
# per-image stages draw 30–60 panels every epoch. A tile sheet colours the panels with numpy, pastes
# them into one array at an integer zoom (square pixels, no resampling) and writes the titles with
# Pillow in matplotlib's font, which makes these figures about ten times cheaper.


def grey_rgb(pixels: np.ndarray) -> np.ndarray:
    """An image in [0, 1] — (1, H, W), (3, H, W), (H, W) or (H, W, 3) — as (H, W, 3) uint8."""
    img = np.asarray(pixels, dtype=np.float32)
    if img.ndim == 3 and img.shape[0] in (1, 3):
        img = np.moveaxis(img, 0, -1)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return (np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)


def signed_rgb(values: np.ndarray, limit: float | None = None) -> np.ndarray:
    """A signed map in the diverging colour map, centred at 0 (white), ±``limit`` at the ends."""
    limit = limit if limit is not None else symmetric_limit(values)
    return to_rgb(values, SIGNED_CMAP, -limit, limit)


def unsigned_rgb(values: np.ndarray, limit: float | None = None) -> np.ndarray:
    """A non-negative map from 0 (black) to ``limit`` (default: its maximum)."""
    limit = limit if limit is not None else symmetric_limit(values)
    return to_rgb(values, UNSIGNED_CMAP, 0.0, limit)


def overlay_rgb(pixels: np.ndarray, heat: np.ndarray, cmap: str = UNSIGNED_CMAP) -> np.ndarray:
    """|heat| (relative to its maximum) over the image in grey, in the maps' colour map, opaque only
    where it is strong (nothing below 30 % of the maximum, then growing), so that a broad, weak map — a
    Grad-CAM spread over the whole image — leaves the image readable."""
    grey = 0.85 * grey_rgb(pixels).astype(np.float32).mean(axis=-1, keepdims=True) / 255
    strength = np.abs(np.asarray(heat, dtype=np.float32))
    strength = strength / (float(strength.max()) or 1.0)
    colour = matplotlib.colormaps[cmap](strength)[..., :3]
    alpha = (0.85 * np.clip((strength - 0.3) / 0.7, 0, 1) ** 1.5)[..., None]
    return (np.clip(grey * (1 - alpha) + colour * alpha, 0, 1) * 255).astype(np.uint8)


class TileSheet:
    """A grid of equally sized RGB panels, each with an optional title above it, drawn as one image.

    ``group`` columns form a block; blocks are separated by a wider gap (e.g. two images side by side,
    three panels each)."""

    TITLE = 44  # pixels above each panel: three lines of 9-point text
    GAP = 10
    GROUP_GAP = 26
    TOP = 34  # room for the sheet's title
    BARS = 40  # room for colour bars under the sheet's title, when there are any

    def __init__(self, rows: int, cols: int, tile: tuple[int, int], zoom: int | None = None, group: int | None = None,
                 bars: bool = False):
        self.rows, self.cols = rows, cols
        self.zoom = zoom or max(1, 160 // max(tile))  # about 160 px per panel: 28 px × 5, 32 px × 5
        self.zoom = max(1, min(self.zoom, 1000 // max(1, rows * tile[0])))  # no taller than TensorBoard shows well
        if bars:
            self.TOP = TileSheet.TOP + self.BARS
        self.th, self.tw = tile[0] * self.zoom, tile[1] * self.zoom
        self.group = group or cols
        self.lefts = []
        x = self.GAP
        for c in range(cols):
            if c and c % self.group == 0:
                x += self.GROUP_GAP - self.GAP
            self.lefts.append(x)
            x += self.tw + self.GAP
        self.width = x
        self.height = self.TOP + rows * (self.TITLE + self.th + self.GAP)
        self.pixels = np.full((self.height, self.width, 3), 255, dtype=np.uint8)
        self.titles: list[tuple[float, float, str]] = []
        self.bar_labels: list[tuple[int, int, int, str, str, str]] = []
        self.groups = 1
        self.places: list[_PerImage] = []  # filled by per_image_sheet

    def put(self, row: int, col: int, rgb: np.ndarray, title: str | None = None) -> None:
        """Paste an (h, w, 3) uint8 panel (zoomed to the sheet's scale) with an optional title."""
        top = self.TOP + row * (self.TITLE + self.th + self.GAP) + self.TITLE
        left = self.lefts[col]
        zoomed = np.repeat(np.repeat(rgb, self.zoom, axis=0), self.zoom, axis=1)
        self.pixels[top:top + self.th, left:left + self.tw] = zoomed[: self.th, : self.tw]
        self.pixels[top - 1, left - 1:left + self.tw + 1] = 160  # a thin frame
        self.pixels[top + self.th, left - 1:left + self.tw + 1] = 160
        self.pixels[top:top + self.th, left - 1] = 160
        self.pixels[top:top + self.th, left + self.tw] = 160
        if title:
            self.titles.append((left + self.tw / 2, top - 3, title))

    def colorbar(self, col: int, cmap: str | None, vmin: float = 0.0, vmax: float = 1.0, label: str = "") -> None:
        """A horizontal colour bar above column ``col`` (the sheet must be made with ``bars=True``), its
        ends labelled with ``vmin`` and ``vmax``: the scale every panel of that column shares. Without
        ``cmap``, only the ``label`` (a column header)."""
        if self.TOP == TileSheet.TOP:
            raise ValueError("make the sheet with bars=True to draw colour bars")
        left, top = self.lefts[col], TileSheet.TOP + 14
        if cmap is None:
            self.bar_labels.append((left, left + self.tw, top, "", "", label))
            return
        ramp = np.linspace(vmin, vmax, self.tw)[None, :].repeat(9, axis=0)
        self.pixels[top:top + 9, left:left + self.tw] = to_rgb(ramp, cmap, vmin, vmax)
        self.pixels[top - 1, left - 1:left + self.tw + 1] = 160
        self.pixels[top + 9, left - 1:left + self.tw + 1] = 160
        self.bar_labels.append((left, left + self.tw, top, f"{vmin:.2g}", f"{vmax:.2g}", label))

    def png(self, title: str) -> bytes:
        """The sheet as PNG bytes with every panel's title and the sheet's ``title`` (wrapped to its width),
        drawn with Pillow in matplotlib's font: pixel-exact and a fraction of a matplotlib render's time."""
        from PIL import Image, ImageDraw

        lines = textwrap.wrap(title, width=max(40, int(self.width / 8.8)))
        extra = 16 * (len(lines) - 1)
        canvas = Image.new("RGB", (self.width, self.height + extra), "white")
        canvas.paste(Image.fromarray(self.pixels), (0, extra))
        draw = ImageDraw.Draw(canvas)
        small, large = _font(12), _font(15)
        for x, y, text in self.titles:
            rows = text.split("\n")
            for j, row in enumerate(rows):  # bottom line sits just above the panel
                draw.text((x, y + extra - 13 * (len(rows) - 1 - j)), row, fill="black", font=small, anchor="md")
        for left, right, top, low, high, label in self.bar_labels:
            draw.text((left, top + extra - 2), label, fill="black", font=small, anchor="ld")
            draw.text((left, top + extra + 11), low, fill="black", font=small, anchor="lt")
            draw.text((right, top + extra + 11), high, fill="black", font=small, anchor="rt")
        for j, row in enumerate(lines):
            draw.text((self.width / 2, 6 + 17 * j), row, fill="black", font=large, anchor="ma")
        buffer = io.BytesIO()
        canvas.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()


_FONTS: dict[int, object] = {}


def _font(size: int):  # type: ignore[no-untyped-def]
    """matplotlib's DejaVu Sans at ``size`` pixels (the figures' font), loaded once."""
    if size not in _FONTS:
        from matplotlib import font_manager
        from PIL import ImageFont

        _FONTS[size] = ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)
    return _FONTS[size]


class _PerImage:
    def __init__(self, sheet: TileSheet, index: int, rows: int, per_image: int):
        self.sheet, self.row = sheet, index % rows
        self.col = (index // rows) * per_image

    def __call__(self, rgb: np.ndarray, title: str | None = None) -> None:
        self.sheet.put(self.row, self.col, rgb, title)
        self.col += 1


def per_image_sheet(n: int, per_image: int, tile: tuple[int, int], bars: bool = False) -> TileSheet:
    """A tile sheet with ``per_image`` panels for each of ``n`` images, two images side by side when
    ``n`` ≥ 6. ``sheet.places[i](rgb, title)`` puts image i's next panel; ``sheet.groups`` is the
    number of images side by side (column ``c`` of each: ``c + g * per_image``)."""
    groups = 2 if n >= 6 else 1
    rows = -(-n // groups)
    sheet = TileSheet(rows, per_image * groups, tile, group=per_image, bars=bars)
    sheet.groups = groups
    sheet.places = [_PerImage(sheet, i, rows, per_image) for i in range(n)]
    return sheet
