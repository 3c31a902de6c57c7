"""Saliency maps with a baseline: source, baseline, saliency, delta, overlay (+ SmoothGrad)."""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..attribution import saliency, smoothgrad, to_map
from .base import Stage, StageContext, register_stage


class SaliencyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    smoothgrad: bool = True  # add a SmoothGrad panel (Captum NoiseTunnel over Saliency)
    smoothgrad_samples: int = Field(16, ge=1)
    smoothgrad_noise: float = Field(0.15, gt=0)  # noise std as a fraction of the input range


@register_stage
class SaliencyStage(Stage):
    name = "saliency"
    description = ("gradient of the true-class logit per probe image: source, baseline (black image), "
                   "saliency, delta, overlay, SmoothGrad")
    Options = SaliencyOptions

    def run(self, ctx: StageContext) -> None:
        from ..plotting import figure, show_image, show_overlay, show_signed, show_unsigned

        model, x, y = ctx.model, ctx.probe.x, ctx.probe.y
        black = ctx.data.black(x)
        maps = {
            "saliency": to_map(saliency(model, x, y), signed=False),  # (B, H, W)
            "baseline": to_map(saliency(model, black, y), signed=False),
        }
        if self.options.smoothgrad:
            maps["smoothgrad"] = to_map(smoothgrad(model, x, y, self.options.smoothgrad_samples,
                                                   self.options.smoothgrad_noise), signed=False)
        ctx.shared.setdefault("maps", {}).update({k: v for k, v in maps.items() if k != "baseline"})
        arrays = {k: v.cpu().numpy() for k, v in maps.items()}
        delta = arrays["saliency"] - arrays["baseline"]
        probs = ctx.probe_probs()

        columns = ["source", "baseline: |∇| on black", "saliency: |∇ true logit|", "delta: saliency − baseline",
                   "overlay"] + (["SmoothGrad"] if self.options.smoothgrad else [])
        n = len(x)
        fig, axes = figure(n, len(columns), panel=1.75)
        for i in range(n):
            row = axes[i]
            limit = float(max(arrays["saliency"][i].max(), arrays["baseline"][i].max(), 1e-12))
            show_image(row[0], ctx.pixels(i), ctx.title(i, probs))
            show_unsigned(row[1], arrays["baseline"][i], limit=limit)
            show_unsigned(row[2], arrays["saliency"][i], limit=limit)
            show_signed(row[3], delta[i], limit=float(np.abs(delta[i]).max()) or 1e-12)
            show_overlay(row[4], ctx.pixels(i), arrays["saliency"][i])
            if self.options.smoothgrad:
                show_unsigned(row[5], arrays["smoothgrad"][i])
        for ax, title in zip(axes[0], columns, strict=True):
            ax.set_title(f"{title}\n{ax.get_title()}" if ax.get_title() else title)
        fig.suptitle(f"saliency, epoch {ctx.epoch} (baseline and saliency share a scale per row; "
                     "delta: red = more than on black)")
        ctx.save_figure(fig, "saliency")
        ctx.record("mean_abs_gradient", float(maps["saliency"].mean()))
        ctx.record("baseline_mean_abs_gradient", float(maps["baseline"].mean()))
