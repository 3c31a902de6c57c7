"""The first layer's weights drawn as images: one tile per hidden unit (MLP) or filter (conv net)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..analysis.records import register_view
from .base import Stage, register_stage

if TYPE_CHECKING:
    from torch import nn

    from .base import StageContext


class NeuronsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_units: int = Field(256, ge=1, le=4096)  # draw at most this many units / filters
    cols: int | None = Field(None, ge=1, le=4096)  # tiles per row; default: as square as possible (8 × 8 for 64)


def first_layer_tiles(model: nn.Module, input_shape: tuple[int, ...], max_units: int) -> np.ndarray:
    """The first layer's weights as tiles: (units, h, w) for one input channel, (units, h, w, 3) for RGB."""
    from torch import nn

    from ..models import first_weight_layer

    layer = first_weight_layer(model)
    weight = layer.weight.detach().cpu().float()
    if isinstance(layer, nn.Linear):
        if math.prod(input_shape) != weight.shape[1]:
            raise ValueError(f"the first layer takes {weight.shape[1]} inputs, not an image of shape {input_shape}")
        weight = weight.reshape(-1, *input_shape)  # (units, C, H, W)
    tiles: np.ndarray = weight[:max_units].numpy().copy()  # a snapshot, not a view of the live weights
    if tiles.shape[1] == 1:
        return tiles[:, 0]
    if tiles.shape[1] == 3:
        return np.moveaxis(tiles, 1, -1)
    return tiles.mean(axis=1)  # other channel counts: the channel mean


def neuron_grid(tiles: np.ndarray, cols: int | None = None, limit: float | None = None) -> tuple[np.ndarray, float]:
    """One mosaic of all tiles with 1-pixel borders, and the shared colour limit (``limit``, or max |w|)."""
    from ..plotting import mosaic, symmetric_limit

    limit = limit or symmetric_limit(tiles)
    grid = mosaic(tiles, cols)
    if grid.ndim == 3:  # RGB: map [−limit, limit] to [0, 1] per channel, grey = 0
        grid = np.clip(grid / (2 * limit) + 0.5, 0.0, 1.0)
        grid[np.isnan(grid)] = 0.82
    return grid, limit


@register_stage
class NeuronsStage(Stage):
    name = "neurons"
    description = ("first-layer weights as images: each hidden unit's 784 weights as a 28×28 tile (MLP), "
                   "or the first conv's filters; one colour scale centred at 0")
    Options = NeuronsOptions

    def run(self, ctx: StageContext) -> None:
        from torch import nn

        from ..models import first_weight_layer

        tiles = first_layer_tiles(ctx.model, ctx.data.input_shape, self.options.max_units)
        layer = first_weight_layer(ctx.model)
        total = layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels
        kind = "hidden units" if isinstance(layer, nn.Linear) else "filters"
        from ..plotting import symmetric_limit

        ctx.draw("neurons", draw_neurons, tiles, self.options.cols, total, kind, ctx.epoch,
                 scale={"weight": symmetric_limit(tiles)})


@register_view
def draw_neurons(tiles: np.ndarray, cols: int | None, total: int, kind: str, epoch: int,
                 scale: dict[str, float] | None = None, scale_note: str = "this epoch's colour scale") -> bytes:
    """The tiles as one mosaic under a colour bar (``scale["weight"]``: its limit), as PNG bytes. Drawn like the
    attribution sheets (:class:`~interp.plotting.TileSheet`): each weight a square of pixels, its longer
    side about 1,000 px, in a fraction of a matplotlib figure's time."""
    from ..plotting import SIGNED_CMAP, TileSheet, to_rgb

    grid, limit = neuron_grid(tiles, cols, (scale or {}).get("weight"))
    height, width = grid.shape[:2]
    zoom = max(1, round(1000 / max(height, width)))
    signed = grid.ndim == 2
    sheet = TileSheet(1, 1, (height, width), zoom=zoom, bars=signed)
    each = f"each tile: one {'unit' if kind == 'hidden units' else 'filter'}'s weights"
    if signed:
        sheet.put(0, 0, to_rgb(grid, SIGNED_CMAP, -limit, limit), each)
        sheet.colorbar(0, SIGNED_CMAP, -limit, limit, "weight (red > 0 > blue)")
    else:  # RGB filters, already mapped to [0, 1] with grey borders
        sheet.put(0, 0, np.round(grid * 255).astype(np.uint8), each)
    shown = f"{len(tiles)} of {total}" if len(tiles) < total else f"{total}"
    scale_text = f"one colour scale, {scale_note}" if signed else \
        f"red, green, blue = the weight on each input channel, grey = 0; {scale_note}"
    return sheet.png(f"first layer, epoch {epoch}: {shown} {kind}, {tiles.shape[1]}×{tiles.shape[2]} weights each "
                     f"({scale_text}; |w| ≤ {limit:.3f})")
