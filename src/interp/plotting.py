"""Figure helpers: the Agg backend, one render per figure, tile mosaics, colour maps centred at zero."""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

__all__ = [
    "SIGNED_CMAP",
    "UNSIGNED_CMAP",
    "figure",
    "grid_shape",
    "mosaic",
    "per_image_panels",
    "png_pixels",
    "render",
    "save_png",
    "show_image",
    "show_signed",
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
    fig, axes = plt.subplots(rows, cols, figsize=(cols * panel + 0.3, rows * panel + 0.5), squeeze=squeeze,
                             layout="constrained", **kwargs)  # type: ignore[arg-type]
    return fig, axes


def per_image_panels(n: int, per_image: int, panel: float = 1.75) -> tuple[Figure, list[list[Axes]]]:
    """A figure with ``per_image`` panels for each of ``n`` images, in two side-by-side groups when
    ``n`` ≥ 6 (so ten images make a 5 × 2·per_image grid). Returns the figure and each image's axes."""
    groups = 2 if n >= 6 else 1
    rows = -(-n // groups)
    fig, axes = figure(rows, per_image * groups, panel=panel)
    out = []
    for i in range(n):
        r, g = i % rows, i // rows
        out.append(list(axes[r, per_image * g: per_image * (g + 1)]))
    used = {id(ax) for row in out for ax in row}
    for ax in axes.flat:
        if id(ax) not in used:
            ax.set_axis_off()
    return fig, out


def render(fig: Figure) -> bytes:
    """Draw ``fig`` once into PNG bytes, trimmed to its contents (nothing clipped); the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", pad_inches=0.08, facecolor="white",
                pil_kwargs={"compress_level": 3})
    plt.close(fig)
    return buffer.getvalue()


def png_pixels(png: bytes) -> np.ndarray:
    """Decode PNG bytes to (H, W, 3) uint8."""
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"))


def save_png(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, compress_level=3)


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


def show_signed(ax: Axes, values: np.ndarray, title: str | None = None, limit: float | None = None):  # type: ignore[no-untyped-def]
    """Draw a signed 2-D map with a diverging colour map centred at zero; returns the image artist."""
    limit = limit if limit is not None else symmetric_limit(values)
    artist = ax.imshow(values, cmap=matplotlib.colormaps[SIGNED_CMAP].with_extremes(bad=BORDER_COLOUR),
                       vmin=-limit, vmax=limit)
    _bare(ax, title)
    return artist


def show_unsigned(ax: Axes, values: np.ndarray, title: str | None = None, limit: float | None = None):  # type: ignore[no-untyped-def]
    """Draw a non-negative 2-D map from 0 to ``limit`` (default its maximum)."""
    limit = limit if limit is not None else symmetric_limit(values)
    artist = ax.imshow(values, cmap=UNSIGNED_CMAP, vmin=0.0, vmax=limit)
    _bare(ax, title)
    return artist


def show_overlay(ax: Axes, pixels: np.ndarray, heat: np.ndarray, title: str | None = None,
                 cmap: str = "jet") -> None:
    """A map laid over the image in grey: |heat| normalised to [0, 1], coloured by ``cmap`` and as
    opaque as it is strong, so that weak attribution leaves the image visible."""
    grey = np.asarray(pixels, dtype=np.float32)
    if grey.ndim == 3:
        grey = grey.mean(axis=0) if grey.shape[0] in (1, 3) else grey.mean(axis=-1)
    ax.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0)
    strength = np.abs(heat)
    strength = strength / (float(strength.max()) or 1.0)
    rgba = matplotlib.colormaps[cmap](strength)
    rgba[..., 3] = 0.85 * np.sqrt(strength)
    ax.imshow(rgba)
    _bare(ax, title)


def _bare(ax: Axes, title: str | None) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
