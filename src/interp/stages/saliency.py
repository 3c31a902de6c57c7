"""Saliency maps with a baseline: source, baseline, saliency, delta, overlay (+ SmoothGrad)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..analysis.records import register_view
from .base import Stage, register_stage

if TYPE_CHECKING:
    from .base import StageContext


class SaliencyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    smoothgrad: bool = True  # add a SmoothGrad panel (Captum NoiseTunnel over Saliency)
    smoothgrad_samples: int = Field(16, ge=1, le=1000)
    smoothgrad_noise: float = Field(0.15, gt=0, le=10)  # noise std as a fraction of the input range


@register_stage
class SaliencyStage(Stage):
    name = "saliency"
    description = ("gradient of the true-class logit per probe image: source, baseline (black image), "
                   "saliency, delta, overlay, SmoothGrad")
    Options = SaliencyOptions

    def run(self, ctx: StageContext) -> None:
        from ..attribution import saliency, smoothgrad, to_map

        model, x, y = ctx.model, ctx.probe.x, ctx.probe.y
        black = ctx.data.black(x)
        maps = {
            "saliency": to_map(saliency(model, x, y), signed=False),  # (B, H, W)
            "baseline": to_map(saliency(model, black, y), signed=False),
        }
        if self.options.smoothgrad:
            maps["smoothgrad"] = to_map(smoothgrad(model, x, y, self.options.smoothgrad_samples,
                                                   self.options.smoothgrad_noise), signed=False)
        ctx.maps.update({k: v for k, v in maps.items() if k != "baseline"})
        pixels, titles = ctx.probe_sheet()
        arrays = {k: v.cpu().numpy() for k, v in maps.items()}
        ctx.draw("saliency", draw_saliency, pixels, titles, arrays, ctx.epoch, scale=saliency_scale(arrays))
        ctx.record("mean_abs_gradient", float(maps["saliency"].mean()))
        ctx.record("baseline_mean_abs_gradient", float(maps["baseline"].mean()))


def saliency_scale(arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """The sheet's colour limits: |∇| (saliency and on black), their difference (±), SmoothGrad."""
    from ..plotting import symmetric_limit

    scale = {"gradient": float(max(arrays["saliency"].max(), arrays["baseline"].max(), 1e-12)),
             "delta": symmetric_limit(arrays["saliency"] - arrays["baseline"])}
    if "smoothgrad" in arrays:
        scale["smoothgrad"] = float(max(arrays["smoothgrad"].max(), 1e-12))
    return scale


@register_view
def draw_saliency(pixels: np.ndarray, titles: list[str], arrays: dict[str, np.ndarray], epoch: int,
                  scale: dict[str, float] | None = None, scale_note: str = "this epoch's colour scale") -> bytes:
    """The sheet: per image its pixels, |∇| on black, saliency, their difference, an overlay and (when
    computed) SmoothGrad; one colour scale per column (``scale``: the limits, e.g. the whole run's)."""
    from ..plotting import (
        SIGNED_CMAP,
        UNSIGNED_CMAP,
        grey_rgb,
        overlay_rgb,
        per_image_sheet,
        signed_rgb,
        unsigned_rgb,
    )

    smooth = "smoothgrad" in arrays
    delta = arrays["saliency"] - arrays["baseline"]
    columns = 6 if smooth else 5
    sheet = per_image_sheet(len(pixels), columns, arrays["saliency"].shape[1:], bars=True)
    # one colour scale per column, shared by every image, so that magnitudes compare across images
    scale = scale or saliency_scale(arrays)
    limit, delta_limit, smooth_limit = scale["gradient"], scale["delta"], scale.get("smoothgrad", 1.0)
    for g in range(sheet.groups):
        first = g * columns
        sheet.colorbar(first, None, label="image")
        sheet.colorbar(first + 1, UNSIGNED_CMAP, 0, limit, "|∇| on black")
        sheet.colorbar(first + 2, UNSIGNED_CMAP, 0, limit, "saliency |∇ logit|")
        sheet.colorbar(first + 3, SIGNED_CMAP, -delta_limit, delta_limit, "saliency − black")
        sheet.colorbar(first + 4, None, label="overlay (own max)")
        if smooth:
            sheet.colorbar(first + 5, UNSIGNED_CMAP, 0, smooth_limit, "SmoothGrad")
    for i, place in enumerate(sheet.places):
        place(grey_rgb(pixels[i]), titles[i])
        place(unsigned_rgb(arrays["baseline"][i], limit), f"max {arrays['baseline'][i].max():.2g}")
        place(unsigned_rgb(arrays["saliency"][i], limit), f"max {arrays['saliency'][i].max():.2g}")
        place(signed_rgb(delta[i], delta_limit))
        place(overlay_rgb(pixels[i], arrays["saliency"][i]))
        if smooth:
            place(unsigned_rgb(arrays["smoothgrad"][i], smooth_limit), f"max {arrays['smoothgrad'][i].max():.2g}")
    return sheet.png(f"saliency, epoch {epoch}: gradient of the true-class logit; each column has one colour "
                     f"scale for all images (bars above: {scale_note}); delta red = stronger than on a black image")
