"""Activation grids: what chosen layers output for one probe image, channel by channel."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..analysis.records import register_view
from .base import Stage, register_stage

if TYPE_CHECKING:
    from torch import Tensor, nn

    from ..data import Data
    from .base import StageContext


class ActivationsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    layers: list[str] | None = None  # default: three blocks spread through the net (conv3, conv6, conv8)
    image: int = Field(0, ge=0, le=10_000)  # which probe image
    channels: int = Field(27, ge=1, le=1024)  # first N channels per layer (all if fewer)


def default_layers(model: nn.Module) -> list[str]:
    """Three blocks spread through the network: ceil(n/3), ceil(2n/3) and n of its n blocks; a network of
    fewer than three blocks (a one-hidden-layer MLP) adds its classifier, whose outputs are the logits."""
    from ..errors import UserError
    from ..models import feature_blocks, features_layer

    blocks = feature_blocks(model)
    n = len(blocks)
    picks = sorted({max(1, math.ceil(n * k / 3)) for k in (1, 2, 3)}) if n else []
    chosen = [blocks[p - 1] for p in picks]
    if len(chosen) < 3:
        try:
            classifier = features_layer(model)[0]
        except UserError:  # no Linear or 1×1 conv at the end: the blocks alone
            return chosen
        if classifier not in chosen:
            chosen.append(classifier)
    return chosen


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
    description = ("after three layers spread through the net: feature-map grids (first 27 channels) for one probe "
                   "image (conv), or every probe image × units as a heat map (dense)")
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
        """Run the probe batch through the model and return each layer's output (B, …)."""
        import torch

        from ..models import capture_activations

        names = self.layers(ctx.model)
        index = min(self.options.image, len(ctx.probe.x) - 1)
        with capture_activations(ctx.model, names) as outputs, torch.no_grad():
            ctx.model(ctx.probe.x)
        return names, dict(outputs), index

    def run(self, ctx: StageContext) -> None:
        names, outputs, index = self.capture(ctx)
        classes = ctx.data.classes
        rows = [classes[int(c)] for c in ctx.probe.y]
        panels = []
        for name in names:
            out = outputs[name].float()
            if out.dim() == 4:  # feature maps of one image, channel by channel
                tiles = activation_tiles(out[index], self.options.channels)
                panels.append({"name": name, "kind": "maps", "values": tiles, "shape": list(out.shape[1:]),
                               "channels": int(out.shape[1])})
            else:  # a dense layer: every probe image × its units, units by mean activation (most active first)
                units = out.flatten(1).cpu().numpy()
                logits = name == names[-1] and units.shape[1] == len(classes) and len(names) > 1
                order = np.arange(units.shape[1]) if logits else np.argsort(-units.mean(axis=0), kind="stable")
                panels.append({"name": name, "kind": "units", "values": units[:, order], "shape": [units.shape[1]],
                               "rows": rows, "columns": list(classes) if logits else None})
        ctx.draw("activations", draw_activations, ctx.pixels(index), classes[int(ctx.probe.y[index])], panels,
                 ctx.epoch, scale=activation_scale(panels))


def activation_scale(panels: list[dict[str, Any]]) -> dict[str, float]:
    """Each layer's colour limits, as values that only grow over a run: ``"<layer> max"`` and
    ``"<layer> -min"`` (the minimum, negated)."""
    scale = {}
    for panel in _panel_values(panels):
        low, high = panel["limits"]
        scale[f"{panel['name']} max"], scale[f"{panel['name']} -min"] = high, -low
    return scale


PANEL = 320  # pixels: each layer's panel is drawn this size, whatever its shape


@register_view
def draw_activations(pixels: np.ndarray, label: str, panels: list[dict[str, Any]], epoch: int,
                     scale: dict[str, float] | None = None, scale_note: str = "this epoch's colour scale") -> bytes:
    """The input image, then per layer a grid of its channels' maps (conv) or a heat map of probe images ×
    units (dense), each under its own colour bar (``scale``: the limits, see :func:`activation_scale`), as
    one tile sheet."""
    from PIL import Image

    from ..plotting import TileSheet, grey_rgb, to_rgb

    def fitted(rgb: np.ndarray) -> np.ndarray:  # stretched to the panel, each value a block of pixels
        return np.asarray(Image.fromarray(rgb).resize((PANEL, PANEL), Image.Resampling.NEAREST))

    maps = any(panel["kind"] == "maps" for panel in panels)
    shown = _panel_values(panels)
    sheet = TileSheet(1, len(shown) + maps, (PANEL, PANEL), zoom=1, bars=True)
    sheet.TITLE = 58  # four lines above a panel
    sheet.height = sheet.TOP + sheet.TITLE + PANEL + sheet.GAP
    sheet.pixels = np.full((sheet.height, sheet.width, 3), 255, dtype=np.uint8)
    if maps:  # the image the feature maps belong to
        sheet.colorbar(0, None, label="input")
        sheet.put(0, 0, fitted(grey_rgb(pixels)), f"{label}\n(the maps are of this image)")
    scale = scale or activation_scale(panels)
    for col, panel in enumerate(shown, start=int(maps)):
        low, high = -scale[f"{panel['name']} -min"], scale[f"{panel['name']} max"]
        sheet.colorbar(col, "viridis", low, high, "activation")
        if panel["kind"] == "maps":
            shape = "×".join(map(str, panel["shape"]))
            title = f"{panel['name']} ({shape})\nfirst {panel['shown']} of {panel['channels']} channels"
        else:
            columns = panel.get("columns")
            across = f"columns: logits of {', '.join(columns)}" if columns else "columns: units, most active first"
            title = (f"{panel['name']} ({panel['shape'][0]} units)\nrows: probe images of {', '.join(panel['rows'])}"
                     f"\n{across}")
        sheet.put(0, col, fitted(to_rgb(panel["values"], "viridis", low, high)), _wrap(title, 50))
    return sheet.png(f"activations, epoch {epoch} (one colour scale per layer: {scale_note})")


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(line for part in text.split("\n") for line in textwrap.wrap(part, width))


def _panel_values(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each panel with the array it shows (conv: the channels' maps as one mosaic) and its colour limits."""
    from ..plotting import mosaic

    out = []
    for panel in panels:
        values = np.asarray(panel["values"])
        grid = mosaic(values) if panel["kind"] == "maps" else values
        finite = grid[np.isfinite(grid)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        out.append({**panel, "values": grid, "limits": (low, max(high, low + 1e-6)), "shown": len(values)})
    return out
