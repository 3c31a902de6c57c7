"""Saliency maps with a baseline: source, baseline, saliency, delta, overlay (+ SmoothGrad)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from .base import Stage, register_stage

if TYPE_CHECKING:
    from ..analysis.runner import StageContext


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
        from ..plotting import TileSheet, grey_rgb, overlay_rgb, signed_rgb, unsigned_rgb

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

        headers = ["source", "baseline:\n|∇| on black", "saliency:\n|∇ true-class logit|",
                   "delta:\nsaliency − baseline", "overlay"] + (["SmoothGrad"] if self.options.smoothgrad else [])
        n = len(x)
        sheet = TileSheet(n, len(headers), arrays["saliency"].shape[1:])
        for i in range(n):
            limit = float(max(arrays["saliency"][i].max(), arrays["baseline"][i].max(), 1e-12))
            panels = [grey_rgb(ctx.pixels(i)), unsigned_rgb(arrays["baseline"][i], limit),
                      unsigned_rgb(arrays["saliency"][i], limit), signed_rgb(delta[i]),
                      overlay_rgb(ctx.pixels(i), arrays["saliency"][i])]
            if self.options.smoothgrad:
                panels.append(unsigned_rgb(arrays["smoothgrad"][i]))
            for c, panel in enumerate(panels):
                title = ctx.title(i, probs) if c == 0 else None
                if i == 0:
                    title = f"{headers[c]}\n{title}" if title else headers[c]
                sheet.put(i, c, panel, title)
        ctx.save_figure(sheet.png(f"saliency, epoch {ctx.epoch}: baseline and saliency share a colour scale per "
                                     "row; delta red = stronger than on black"), "saliency")
        ctx.record("mean_abs_gradient", float(maps["saliency"].mean()))
        ctx.record("baseline_mean_abs_gradient", float(maps["baseline"].mean()))
