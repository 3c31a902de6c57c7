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
            ctx.record(f"{name.rsplit('.', 1)[-1]}/fraction_active", float((out[index] > 0).float().mean()))
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


@register_view
def draw_activations(pixels: np.ndarray, label: str, panels: list[dict[str, Any]], epoch: int,
                     scale: dict[str, float] | None = None, scale_note: str = "this epoch's colour scale") -> Any:
    """The input image, then per layer a grid of its channels' maps (conv) or a heat map of probe images ×
    units (dense), each with its own colour bar (``scale``: the limits, see :func:`activation_scale`)."""
    from ..plotting import figure, show_image

    maps = any(panel["kind"] == "maps" for panel in panels)
    fig, axes = figure(1, len(panels) + maps, panel=3.2)  # images, or classes and units
    if maps:  # the image the feature maps belong to
        show_image(axes[0, 0], pixels, f"input: {label}\n(the maps are of this image)")
    scale = scale or activation_scale(panels)
    for ax, panel in zip(axes[0, int(maps):], _panel_values(panels), strict=True):
        low, high = -scale[f"{panel['name']} -min"], scale[f"{panel['name']} max"]
        image = ax.imshow(panel["values"], cmap="viridis", aspect="equal" if panel["kind"] == "maps" else "auto",
                          interpolation="nearest", vmin=low, vmax=high)
        if panel["kind"] == "maps":
            ax.set_xticks([])
            ax.set_yticks([])
            shape = "×".join(map(str, panel["shape"]))
            ax.set_title(f"{panel['name']} ({shape})\nfirst {panel['shown']} of {panel['channels']} channels")
        else:
            ax.set_yticks(range(len(panel["rows"])), panel["rows"], fontsize=7)
            ax.set_ylabel("probe image (true class)")
            if panel.get("columns"):  # the classifier: one logit per class
                ax.set_xticks(range(len(panel["columns"])), panel["columns"], fontsize=7,
                              rotation=90 if max(map(len, panel["columns"])) > 2 else 0)
                ax.set_xlabel("class (logit)")
            else:
                ax.set_xlabel("unit, most active first")
            ax.set_title(f"{panel['name']} ({panel['shape'][0]} units)\nevery probe image")
        fig.colorbar(image, ax=ax, shrink=0.7, label="activation")
    fig.suptitle(f"activations, epoch {epoch} (one colour scale per layer: {scale_note})")
    return fig


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
