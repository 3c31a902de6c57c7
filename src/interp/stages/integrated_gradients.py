"""Integrated gradients from a black baseline, with the completeness error beside the maps."""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from ..attribution import integrated_gradients, target_logits, to_map
from .base import Stage, StageContext, register_stage

# Above this median relative completeness error the integral is too coarse to trust.
COMPLETENESS_WARNING = 0.05


class IGOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = Field(50, ge=2)  # points on the path from the baseline to the image
    internal_batch_size: int = Field(256, ge=1)  # images per forward pass inside Captum (bounds memory)


@register_stage
class IntegratedGradientsStage(Stage):
    name = "integrated_gradients"
    description = ("integrated gradients from a black image to each probe image; completeness error "
                   "|Σ attributions − (F(x) − F(black))| / |F(x) − F(black)|")
    Options = IGOptions

    def run(self, ctx: StageContext) -> None:
        from ..plotting import per_image_panels, show_image, show_overlay, show_signed

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
        fig, panels = per_image_panels(len(arrays), 3)
        for i, (a, b, c) in enumerate(panels):
            show_image(a, ctx.pixels(i), ctx.title(i, probs))
            show_signed(b, arrays[i], f"Σ {arrays[i].sum():+.2f} · error {float(relative[i]):.1%}")
            show_overlay(c, ctx.pixels(i), np.clip(arrays[i], 0, None), "positive evidence")
        fig.suptitle(f"integrated gradients, epoch {ctx.epoch}, {self.options.steps} steps from black "
                     f"(red = for the true class, blue = against); median completeness error {error:.2%}")
        ctx.save_figure(fig, "integrated_gradients")
        torch.save({"maps": maps.cpu(), "delta": delta.cpu(), "difference": difference.cpu()},
                   ctx.out_dir / "attributions.pt")
