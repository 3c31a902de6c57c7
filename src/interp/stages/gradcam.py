"""Grad-CAM on the last convolutional block, upsampled over the probe images."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from torch import nn

from ..attribution import gradcam, gradcam_layer
from ..data import Data
from ..models import last_conv_block, resolve_layer
from .base import Stage, StageContext, register_stage


class GradCamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    layer: str | None = None  # default: the last block with spatial output (conv8 in allconv)


@register_stage
class GradCamStage(Stage):
    name = "gradcam"
    description = "Grad-CAM of the true class at the last conv layer, upsampled and laid over each probe image"
    Options = GradCamOptions

    def prepare(self, model: nn.Module, data: Data) -> None:
        if self.options.layer:
            resolve_layer(model, self.options.layer)  # fails now, not after the first epoch

    def skip_reason(self, model: nn.Module, data: Data) -> str | None:
        if last_conv_block(model) is None:
            return "the model has no convolutional layers"
        return super().skip_reason(model, data)

    def run(self, ctx: StageContext) -> None:
        from ..plotting import grey_rgb, overlay_rgb, per_image_sheet, unsigned_rgb

        name, layer = gradcam_layer(ctx.model, self.options.layer)
        cams = gradcam(ctx.model, layer, ctx.probe.x, ctx.probe.y)[:, 0]  # (B, H, W)
        ctx.shared.setdefault("maps", {})["gradcam"] = cams
        arrays = cams.cpu().numpy()
        probs = ctx.probe_probs()
        sheet = per_image_sheet(len(arrays), 3, arrays.shape[1:])
        for i, place in enumerate(sheet.places):
            place(grey_rgb(ctx.pixels(i)), ctx.title(i, probs))
            place(unsigned_rgb(arrays[i]), f"Grad-CAM\nmax {arrays[i].max():.3g}")
            place(overlay_rgb(ctx.pixels(i), arrays[i]), "overlay")
        ctx.save_figure(sheet.png(f"Grad-CAM at {name}, epoch {ctx.epoch} (true class; ReLU'd, bilinear "
                                     "upsampling)"), "gradcam")
        ctx.record("zero_maps", float((cams.flatten(1).amax(dim=1) <= 0).float().mean()))
