"""Every attribution method of ``analysis.methods`` on the probe images, side by side."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..analysis.records import register_view
from .base import Stage, register_stage

if TYPE_CHECKING:
    from .base import StageContext


class AttributionsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = Field(50, ge=2, le=2000)  # integration points (integrated gradients; expected gradients: samples)
    samples: int = Field(16, ge=1, le=1000)  # SmoothGrad's noisy copies


@register_stage
class AttributionsStage(Stage):
    name = "attributions"
    description = ("every method of analysis.methods (saliency, guided backprop, Grad-CAM, …) on the probe images, "
                   "one column each: red for the true class, blue against; unsigned maps in one colour")
    Options = AttributionsOptions
    needs = frozenset({"images", "classes"})
    runs_after = ("saliency", "integrated_gradients", "gradcam")  # their maps are not computed twice
    skips_noticed = False

    def run(self, ctx: StageContext) -> None:
        import torch

        from ..attribution import DEFAULT_METHODS, method_class, white

        model, x, y = ctx.model, ctx.probe.x, ctx.probe.y
        black = ctx.data.black(x)
        maps, skipped = {}, {}
        for name in ctx.methods or DEFAULT_METHODS:
            method = method_class(name)()
            reason = method.skip_reason(model, x)
            if reason:
                skipped[name] = reason
                continue
            if name not in ctx.maps:
                torch.manual_seed(0)  # SmoothGrad's and expected gradients' noise (the runner restores the RNG)
                ctx.maps[name] = method.map(model, x, y, baseline=black, white=white(black, ctx.data),
                                            steps=self.options.steps, samples=self.options.samples)
            maps[name] = ctx.maps[name].detach().float().cpu().numpy()
        if skipped and not self.skips_noticed:
            self.skips_noticed = True
            ctx.notice("attributions: " + "; ".join(f"{name} skipped ({reason})" for name, reason in skipped.items()))
        if not maps:
            return
        signed = {name: method_class(name).signed for name in maps}
        pixels, titles = ctx.probe_sheet()
        ctx.draw("attributions", draw_attributions, pixels, titles, list(maps), maps, signed, ctx.epoch,
                 scale=attribution_scale(maps, signed))


def attribution_scale(maps: dict[str, np.ndarray], signed: dict[str, bool]) -> dict[str, float]:
    """Each method's colour limit over the probe images: its largest |value| (signed maps are centred at 0)."""
    from ..plotting import symmetric_limit

    return {name: symmetric_limit(values) for name, values in maps.items()}


@register_view
def draw_attributions(pixels: np.ndarray, titles: list[str], names: list[str], maps: dict[str, np.ndarray],
                      signed: dict[str, bool], epoch: int, scale: dict[str, float] | None = None,
                      scale_note: str = "this epoch's colour scale") -> bytes:
    """Per probe image: its pixels, then one panel per method of ``names`` (in that order); one colour scale
    per column (``scale``)."""
    from ..plotting import SIGNED_CMAP, UNSIGNED_CMAP, grey_rgb, per_image_sheet, signed_rgb, unsigned_rgb

    columns = len(names) + 1
    sheet = per_image_sheet(len(pixels), columns, maps[names[0]].shape[1:], bars=True)
    limits = scale or attribution_scale(maps, signed)
    for g in range(sheet.groups):
        sheet.colorbar(g * columns, None, label="image")
        for k, name in enumerate(names, start=1):
            low = -limits[name] if signed[name] else 0.0
            sheet.colorbar(g * columns + k, SIGNED_CMAP if signed[name] else UNSIGNED_CMAP, low, limits[name],
                           name.replace("integrated_gradients", "IG").replace("_", " "))
    for i, place in enumerate(sheet.places):
        place(grey_rgb(pixels[i]), titles[i])
        for name in names:
            values = maps[name][i]
            place(signed_rgb(values, limits[name]) if signed[name] else unsigned_rgb(np.abs(values), limits[name]))
    return sheet.png(f"attribution methods, epoch {epoch}: the true class's map (signed: red for, blue against; "
                     f"unsigned: magnitude); one colour scale per column ({scale_note})")
