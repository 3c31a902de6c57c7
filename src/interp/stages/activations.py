"""Activation grids: what chosen layers output for one probe image, channel by channel."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .base import Stage, register_stage

if TYPE_CHECKING:
    from torch import Tensor, nn

    from ..analysis.runner import StageContext
    from ..data import Data


class ActivationsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    layers: list[str] | None = None  # default: three blocks spread through the net (conv3, conv6, conv8)
    image: int = Field(0, ge=0, le=10_000)  # which probe image
    channels: int = Field(27, ge=1, le=1024)  # first N channels per layer (all if fewer)


def default_layers(model: nn.Module) -> list[str]:
    """Three blocks spread through the network: ceil(n/3), ceil(2n/3) and n of its n blocks."""
    from ..models import feature_blocks

    blocks = feature_blocks(model)
    n = len(blocks)
    picks = sorted({max(1, math.ceil(n * k / 3)) for k in (1, 2, 3)}) if n else []
    return [blocks[p - 1] for p in picks]


def activation_tiles(output: Tensor, channels: int) -> np.ndarray:
    """One image's layer output as tiles: (C, h, w) maps → first ``channels`` maps; a vector of units →
    a single near-square tile (units in reading order, the rest NaN)."""
    if output.dim() == 3:
        return output[:channels].cpu().numpy()
    flat = output.flatten().cpu().numpy()
    cols = math.ceil(math.sqrt(len(flat)))
    rows = math.ceil(len(flat) / cols)
    tile = np.full(rows * cols, np.nan, dtype=np.float32)
    tile[: len(flat)] = flat
    return tile.reshape(1, rows, cols)


@register_stage
class ActivationsStage(Stage):
    name = "activations"
    description = "feature-map grids (first 27 channels) after three layers spread through the net, for one probe image"
    Options = ActivationsOptions

    def prepare(self, model: nn.Module, data: Data) -> None:
        from ..models import resolve_layer

        for name in self.options.layers or []:
            resolve_layer(model, name)

    def layers(self, model: nn.Module) -> list[str]:
        from ..models import resolve_layer

        return [resolve_layer(model, n)[0] for n in self.options.layers] if self.options.layers \
            else default_layers(model)

    def capture(self, ctx: StageContext) -> tuple[list[str], dict[str, Tensor], int]:
        """Run the chosen probe image through the model and return each layer's output for it."""
        import torch

        from ..models import capture_activations

        names = self.layers(ctx.model)
        index = min(self.options.image, len(ctx.probe.x) - 1)
        with capture_activations(ctx.model, names) as outputs, torch.no_grad():
            ctx.model(ctx.probe.x[index:index + 1])
        return names, {k: v[0] for k, v in outputs.items()}, index

    def run(self, ctx: StageContext) -> None:
        from ..plotting import figure, mosaic, show_image

        names, outputs, index = self.capture(ctx)
        fig, axes = figure(1, len(names) + 1, panel=3.2)
        show_image(axes[0, 0], ctx.pixels(index), f"input: {ctx.data.classes[int(ctx.probe.y[index])]}")
        for ax, name in zip(axes[0, 1:], names, strict=True):
            out = outputs[name]
            tiles = activation_tiles(out, self.options.channels)
            grid = mosaic(tiles)
            finite = grid[np.isfinite(grid)]
            low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            image = ax.imshow(grid, cmap="viridis", vmin=low, vmax=max(high, low + 1e-6))
            ax.set_xticks([])
            ax.set_yticks([])
            shape = "×".join(map(str, out.shape))
            what = f"first {len(tiles)} of {out.shape[0]} channels" if out.dim() == 3 else f"{out.numel()} units"
            ax.set_title(f"{name} ({shape})\n{what}")
            fig.colorbar(image, ax=ax, shrink=0.7)
            ctx.record(f"{name.rsplit('.', 1)[-1]}/fraction_active", float((out > 0).float().mean()))
        fig.suptitle(f"activations, epoch {ctx.epoch} (one colour scale per layer)")
        ctx.save_figure(fig, "activations")
