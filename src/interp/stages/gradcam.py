"""Grad-CAM on the last convolutional block, upsampled over the probe images."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict

from ..analysis.records import register_view
from .base import Stage, register_stage

if TYPE_CHECKING:
    from torch import nn

    from ..data import Data
    from .base import StageContext


class GradCamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    layer: str | None = None  # default: the last layer with spatial output (conv8 in allconv, layer4 in a ResNet)


@register_stage
class GradCamStage(Stage):
    name = "gradcam"
    description = "Grad-CAM of the true class at the last conv layer, upsampled and laid over each probe image"
    Options = GradCamOptions
    needs = frozenset({"images", "classes", "conv"})

    def prepare(self, model: nn.Module, data: Data) -> None:
        if self.options.layer:
            from ..models import resolve_layer

            resolve_layer(model, self.options.layer)  # fails now, not after the first epoch

    def run(self, ctx: StageContext) -> None:
        from ..attribution import gradcam, gradcam_layer

        name, layer = gradcam_layer(ctx.model, self.options.layer, ctx.probe.x)
        cams = gradcam(ctx.model, layer, ctx.probe.x, ctx.probe.y)[:, 0]  # (B, H, W)
        ctx.maps["gradcam"] = cams
        pixels, titles = ctx.probe_sheet()
        arrays = cams.cpu().numpy()
        ctx.draw("gradcam", draw_gradcam, pixels, titles, arrays, name, ctx.epoch,
                 scale={"gradcam": float(max(arrays.max(), 1e-12))})
        ctx.record("zero_maps", float((cams.flatten(1).amax(dim=1) <= 0).float().mean()))


@register_view
def draw_gradcam(pixels: np.ndarray, titles: list[str], arrays: np.ndarray, layer: str, epoch: int,
                 scale: dict[str, float] | None = None, scale_note: str = "this epoch's colour scale") -> bytes:
    """The sheet: image, map, overlay per probe image; one colour scale (``scale["gradcam"]``: its top)."""
    from ..plotting import UNSIGNED_CMAP, grey_rgb, overlay_rgb, per_image_sheet, unsigned_rgb

    sheet = per_image_sheet(len(arrays), 3, arrays.shape[1:], bars=True)
    limit = (scale or {}).get("gradcam") or float(max(arrays.max(), 1e-12))  # one scale for every image
    for g in range(sheet.groups):
        sheet.colorbar(3 * g, None, label="image")
        sheet.colorbar(3 * g + 1, UNSIGNED_CMAP, 0, limit, "Grad-CAM")
        sheet.colorbar(3 * g + 2, None, label="overlay (own max)")
    for i, place in enumerate(sheet.places):
        place(grey_rgb(pixels[i]), titles[i])
        place(unsigned_rgb(arrays[i], limit), "all zero" if arrays[i].max() <= 0 else f"max {arrays[i].max():.2g}")
        place(overlay_rgb(pixels[i], arrays[i]))
    return sheet.png(f"Grad-CAM at {layer}, epoch {epoch} (true class; ReLU'd, bilinear upsampling; one colour "
                     f"scale for all images: {scale_note})")
