"""Figure helpers: the figures' style, one render per figure, tile mosaics, colour maps centred at zero."""

from __future__ import annotations

import contextlib
import io
import math
import textwrap
from collections.abc import Iterator

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

__all__ = [
    "SIGNED_CMAP",
    "STYLE",
    "UNSIGNED_CMAP",
    "figure",
    "grid_shape",
    "mosaic",
    "TileSheet",
    "grey_rgb",
    "overlay_rgb",
    "per_image_sheet",
    "signed_rgb",
    "style",
    "unsigned_rgb",
    "render",
    "show_image",
    "symmetric_limit",
    "to_rgb",
]

SIGNED_CMAP = "RdBu_r"  # red = positive, blue = negative, white = 0
UNSIGNED_CMAP = "inferno"
BORDER_COLOUR = (0.82, 0.82, 0.82)

# The figures' look, applied while a figure is built and drawn (never to matplotlib's global settings: a
# notebook that imports interp keeps its own).
STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "font.size": 9,
    "axes.titlesize": 9,
    "figure.titlesize": 11,
    "image.interpolation": "nearest",
}


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Matplotlib's defaults with :data:`STYLE` on top, for the figures built and drawn inside; the caller's
    settings come back after."""
    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update(STYLE)
        yield


def figure(rows: int = 1, cols: int = 1, panel: float = 1.7, squeeze: bool = False,
           **kwargs: object) -> tuple[Figure, np.ndarray]:
    """A figure of ``rows × cols`` panels, each about ``panel`` inches square, laid out tightly; its own Agg
    canvas (no pyplot: nothing is registered or shown)."""
    fig = Figure(figsize=(cols * panel + 0.3, rows * panel + 0.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=squeeze, **kwargs)  # type: ignore[call-overload]
    return fig, axes


def render(fig: Figure) -> bytes:
    """Draw ``fig`` into PNG bytes of exactly its size (the same every epoch, so that TensorBoard's step
    slider does not jump); constrained layout keeps titles and outside legends inside. A figure without a
    layout engine is trimmed to its contents instead.

    One pass of the Agg renderer, the layout engine running inside it: ``savefig`` would draw the figure
    twice (once without painting, for a layout that ``Figure.draw`` does anyway). The pixels are the same."""
    if fig.get_layout_engine() is None:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", facecolor="white", pil_kwargs={"compress_level": 1},
                    bbox_inches="tight", pad_inches=0.08)
        return buffer.getvalue()
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    fig.patch.set_facecolor("white")
    canvas.draw()
    pixels = canvas.buffer_rgba()
    buffer = io.BytesIO()
    Image.frombuffer("RGBA", (pixels.shape[1], pixels.shape[0]), pixels, "raw", "RGBA", 0, 1).save(
        buffer, format="png", compress_level=1)
    return buffer.getvalue()


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
    three panels each). ``margin``: pixels left of the first column (room for titles wider than a panel)."""

    TITLE = 44  # pixels above each panel: three lines of 9-point text
    GAP = 10
    GROUP_GAP = 26
    TOP = 34  # room for the sheet's title
    BARS = 40  # room for colour bars under the sheet's title, when there are any

    def __init__(self, rows: int, cols: int, tile: tuple[int, int], zoom: int | None = None, group: int | None = None,
                 bars: bool = False, margin: int = GAP):
        self.rows, self.cols = rows, cols
        self.zoom = zoom or max(1, 160 // max(tile))  # about 160 px per panel: 28 px × 5, 32 px × 5
        self.zoom = max(1, min(self.zoom, 1000 // max(1, rows * tile[0])))  # no taller than TensorBoard shows well
        if bars:
            self.TOP = TileSheet.TOP + self.BARS
        self.th, self.tw = tile[0] * self.zoom, tile[1] * self.zoom
        self.group = group or cols
        self.lefts = []
        x = margin
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
        """The sheet as PNG bytes with every panel's title and the sheet's ``title`` (wrapped to its width;
        a newline in it starts a new line), drawn with Pillow in matplotlib's font: pixel-exact and a
        fraction of a matplotlib render's time."""
        from PIL import Image, ImageDraw

        width = max(40, int(self.width / 8.8))
        lines = [line for part in title.split("\n") for line in textwrap.wrap(part, width=width)]
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
