"""Integrated gradients from a black baseline, with the completeness error beside the maps."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .base import Stage, register_stage

if TYPE_CHECKING:
    from ..analysis.runner import StageContext

# Above this median relative completeness error the integral is too coarse to trust.
COMPLETENESS_WARNING = 0.05


class IGOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = Field(50, ge=2, le=2000)  # points on the path from the baseline to the image
    internal_batch_size: int = Field(256, ge=1, le=65_536)  # images per forward pass inside Captum (bounds memory)


@register_stage
class IntegratedGradientsStage(Stage):
    name = "integrated_gradients"
    description = ("integrated gradients from a black image to each probe image; completeness error "
                   "|Σ attributions − (F(x) − F(black))| / |F(x) − F(black)|")
    Options = IGOptions

    def run(self, ctx: StageContext) -> None:
        import torch

        from ..attribution import integrated_gradients, target_logits, to_map
        from ..plotting import grey_rgb, overlay_rgb, per_image_sheet, signed_rgb

        model, x, y = ctx.model, ctx.probe.x, ctx.probe.y
        black = ctx.data.black(x)
        attributions, delta = integrated_gradients(model, x, y, black, self.options.steps,
                                                   self.options.internal_batch_size)
        difference = target_logits(model, x, y) - target_logits(model, black, y)  # F(x) − F(baseline)
        relative = (delta.abs() / difference.abs().clamp(min=1e-12)).cpu()
        maps = to_map(attributions, signed=True)  # (B, H, W), sums to Σ attributions per image
        ctx.shared.setdefault("maps", {})["integrated_gradients"] = maps
        error = float(relative.median())
        ctx.record("completeness_error", error)
        ctx.record("max_abs_delta", float(delta.abs().max()))
        if error > COMPLETENESS_WARNING:
            ctx.notice(f"integrated_gradients: completeness error {error:.1%} at epoch {ctx.epoch} is above "
                       f"{COMPLETENESS_WARNING:.0%}; raise the steps option (now {self.options.steps})")

        arrays = maps.cpu().numpy()
        probs = ctx.probe_probs()
        sheet = per_image_sheet(len(arrays), 3, arrays.shape[1:])
        for i, place in enumerate(sheet.places):
            place(grey_rgb(ctx.pixels(i)), ctx.title(i, probs))
            place(signed_rgb(arrays[i]), f"IG: Σ {arrays[i].sum():+.2f}\ncompleteness error {float(relative[i]):.1%}")
            place(overlay_rgb(ctx.pixels(i), np.clip(arrays[i], 0, None)), "positive evidence")
        ctx.save_figure(sheet.png(
            f"integrated gradients, epoch {ctx.epoch}, {self.options.steps} steps from black (red = for the true "
            f"class, blue = against); median completeness error {error:.2%}"), "integrated_gradients")
        tensors = io.BytesIO()
        torch.save({"maps": maps.cpu(), "delta": delta.cpu(), "difference": difference.cpu()}, tensors)
        ctx.save_file("attributions.pt", tensors.getvalue())
