"""The first layer's weights drawn as images: one tile per hidden unit (MLP) or filter (conv net)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .base import Stage, register_stage

if TYPE_CHECKING:
    from torch import nn

    from ..analysis.runner import StageContext


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


def neuron_grid(tiles: np.ndarray, cols: int | None = None) -> tuple[np.ndarray, float]:
    """One mosaic of all tiles with 1-pixel borders, and the shared colour limit (max |w|)."""
    from ..plotting import mosaic, symmetric_limit

    limit = symmetric_limit(tiles)
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
        ctx.draw("neurons", draw_neurons, tiles, self.options.cols, total, kind, ctx.epoch)


def draw_neurons(tiles: np.ndarray, cols: int | None, total: int, kind: str, epoch: int) -> Any:
    """The tiles as one mosaic with a colour bar (run by the drawing worker)."""
    import matplotlib

    from ..plotting import BORDER_COLOUR, SIGNED_CMAP, figure

    grid, limit = neuron_grid(tiles, cols)
    height, width = grid.shape[:2]
    scale = min(9.0 / width, 9.0 / height, 0.2)  # inches per weight
    fig, axes = figure(1, 1, panel=1.0)
    fig.set_size_inches(max(width * scale, 3.0) + 1.2, height * scale + 0.9)
    ax = axes[0, 0]
    if grid.ndim == 2:
        cmap = matplotlib.colormaps[SIGNED_CMAP].with_extremes(bad=BORDER_COLOUR)
        image = ax.imshow(grid, cmap=cmap, vmin=-limit, vmax=limit)
        fig.colorbar(image, ax=ax, shrink=0.7, label="weight")
    else:
        ax.imshow(grid)
    ax.set_xticks([])
    ax.set_yticks([])
    shown = f"{len(tiles)} of {total}" if len(tiles) < total else f"{total}"
    ax.set_title(f"first layer, epoch {epoch}: {shown} {kind}, {tiles.shape[1]}×{tiles.shape[2]} "
                 f"weights each (red > 0 > blue, |w| ≤ {limit:.3f})")
    return fig
