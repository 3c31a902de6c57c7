"""Integrated gradients from a black, a blurred and a uniform-noise baseline, with the completeness error
beside the maps."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..analysis.records import register_view
from .base import Stage, register_stage

if TYPE_CHECKING:
    from .base import StageContext

# Above this median relative completeness error the integral is too coarse to trust.
COMPLETENESS_WARNING = 0.05
# The method each baseline gives (the names the trust stage scores them by).
METHOD_OF = {"black": "integrated_gradients", "blur": "integrated_gradients_blur", "noise": "expected_gradients"}
LABELS = {"black": "IG from black", "blur": "IG from blur", "noise": "expected gradients"}


class IGOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = Field(50, ge=2, le=2000)  # points on the path from the baseline to the image (noise: samples)
    # IG is integrated with this many points first (Gauss–Legendre: the default runs' median completeness error
    # was under 4 % with 20); an image whose error is above 5 % is integrated again with `steps`
    first_steps: int = Field(20, ge=2, le=2000)
    # images per forward pass inside Captum (bounds memory); None: 64 on a CPU (fastest there), 256 elsewhere
    internal_batch_size: int | None = Field(None, ge=1, le=65_536)
    # Where the path starts: black (integrated_gradients), a blurred copy of the image
    # (integrated_gradients_blur), uniform noise (expected_gradients over noise_baselines references).
    baselines: list[Literal["black", "blur", "noise"]] = Field(
        default=["black", "blur", "noise"], min_length=1)
    blur_sigma: float = Field(0.1, gt=0, le=1)  # the blur's standard deviation, as a fraction of the image side
    noise_baselines: int = Field(4, ge=1, le=1000)


@register_stage
class IntegratedGradientsStage(Stage):
    name = "integrated_gradients"
    description = ("integrated gradients from a black image, a blurred copy and uniform noise (expected "
                   "gradients) to each probe image; completeness error |Σ attributions − (F(x) − F(x′))| / "
                   "|F(x) − F(x′)|")
    Options = IGOptions

    def run(self, ctx: StageContext) -> None:
        import torch

        from ..attribution import (
            blurred,
            expected_gradients,
            integrated_gradients,
            target_logits,
            to_map,
            white,
        )
        model, x, y = ctx.model, ctx.probe.x, ctx.probe.y
        options = self.options
        black = ctx.data.black(x)
        maps, errors, relative, saved = {}, {}, {}, {}
        finer = 0  # images integrated again with `steps`
        for baseline in options.baselines:
            if baseline == "noise":
                torch.manual_seed(0)  # the same references every epoch (the runner restores the RNG)
                attributions = expected_gradients(model, x, y, black, white(black, ctx.data), options.noise_baselines,
                                                  options.steps, options.internal_batch_size)
            else:
                start = black if baseline == "black" else blurred(x, options.blur_sigma)
                difference = target_logits(model, x, y) - target_logits(model, start, y)  # F(x) − F(baseline)
                attributions, delta = integrated_gradients(model, x, y, start, min(options.first_steps, options.steps),
                                                           options.internal_batch_size)
                coarse = (delta.abs() / difference.abs().clamp(min=1e-12)) > COMPLETENESS_WARNING
                if options.first_steps < options.steps and bool(coarse.any()):  # those images again, finer
                    again = coarse.nonzero()[:, 0]
                    finer += len(again)
                    attributions[again], delta[again] = integrated_gradients(
                        model, x[again], y[again], start[again], options.steps, options.internal_batch_size)
                relative[baseline] = (delta.abs() / difference.abs().clamp(min=1e-12)).cpu()
                errors[baseline] = float(np.median(relative[baseline].numpy()))  # torch's median is the lower one
                suffix = "" if baseline == "black" else f"/{baseline}"
                ctx.record(f"completeness_error{suffix}", errors[baseline])
                ctx.record(f"max_abs_delta{suffix}", float(delta.abs().max()))
                saved[baseline] = {"delta": delta.cpu(), "difference": difference.cpu()}
            maps[baseline] = to_map(attributions, signed=True)  # (B, H, W), sums to Σ attributions per image
        ctx.maps.update({METHOD_OF[b]: m for b, m in maps.items()})
        ctx.completeness.update({METHOD_OF[b]: e for b, e in errors.items()})
        coarse = {b: e for b, e in errors.items() if e > COMPLETENESS_WARNING}
        if coarse:
            said = ", ".join(f"{e:.1%} ({b})" for b, e in coarse.items())
            ctx.notice(f"integrated_gradients: completeness error {said} at epoch {ctx.epoch} is above "
                       f"{COMPLETENESS_WARNING:.0%}; raise the steps option (now {options.steps})")

        from ..plotting import symmetric_limit

        pixels, titles = ctx.probe_sheet()
        arrays = {b: m.cpu().numpy() for b, m in maps.items()}
        ctx.draw("integrated_gradients", draw_integrated_gradients, pixels, titles, arrays,
                 {b: r.numpy() for b, r in relative.items()}, errors, _points(options, finer, bool(relative)),
                 options.noise_baselines,
                 ctx.epoch, scale={b: symmetric_limit(values) for b, values in arrays.items()})
        ctx.keep("baselines", saved)  # per baseline: Captum's convergence delta and F(x) − F(baseline)


def _points(options: IGOptions, finer: int, integrated: bool) -> str:
    """How many points the integrals took, for the figure's title: '20', '20 (50 for 3 of the integrals)'."""
    first = min(options.first_steps, options.steps) if integrated else options.steps
    return f"{first} ({options.steps} for {finer} of the integrals)" if finer else f"{first}"


@register_view
def draw_integrated_gradients(pixels: np.ndarray, titles: list[str], arrays: dict[str, np.ndarray],
                              relative: dict[str, np.ndarray], errors: dict[str, float], steps: int | str,
                              noise_baselines: int, epoch: int, scale: dict[str, float] | None = None,
                              scale_note: str = "this epoch's colour scale") -> bytes:
    """The sheet: per image its pixels, the map from each baseline (one colour scale per column, centred
    at 0; ``scale``: the limit per baseline) and the positive evidence of the first over the image."""
    from ..plotting import SIGNED_CMAP, grey_rgb, overlay_rgb, per_image_sheet, signed_rgb, symmetric_limit

    first = next(iter(arrays))
    columns = len(arrays) + 2
    sheet = per_image_sheet(len(pixels), columns, arrays[first].shape[1:], bars=True)
    # one colour scale per baseline, shared by every image (the bar above the column), centred at 0
    limits = scale or {b: symmetric_limit(values) for b, values in arrays.items()}
    for g in range(sheet.groups):
        sheet.colorbar(g * columns, None, label="image")
        for k, baseline in enumerate(arrays, start=1):
            sheet.colorbar(g * columns + k, SIGNED_CMAP, -limits[baseline], limits[baseline],
                           LABELS[baseline].replace("IG from ", "from "))
        sheet.colorbar(g * columns + columns - 1, None, label="overlay (own max)")
    for i, place in enumerate(sheet.places):
        place(grey_rgb(pixels[i]), titles[i])
        for baseline, values in arrays.items():
            detail = f"err {float(relative[baseline][i]):.1%}" if baseline in relative else f"{noise_baselines} refs"
            place(signed_rgb(values[i], limits[baseline]), f"{LABELS[baseline]}\nΣ {values[i].sum():+.2f}, {detail}")
        place(overlay_rgb(pixels[i], np.clip(arrays[first][i], 0, None)), f"positive evidence\n({first})")
    median = "; ".join(f"{b} {e:.2%}" for b, e in errors.items())
    return sheet.png(f"integrated gradients, epoch {epoch}, points on each path: {steps} (red = for the true "
                     f"class, blue = against; one colour scale per column: {scale_note})\nmedian completeness error (err): "
                     f"{median or 'not defined for noise'}")
