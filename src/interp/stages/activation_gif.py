"""An animated walk through the network: one probe image, then what each layer makes of it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .activations import ActivationsStage, activation_tiles
from .base import register_stage

if TYPE_CHECKING:
    from torch import nn

    from .base import StageContext


def _gif_only() -> list[Literal["gif", "mp4"]]:
    return ["gif"]


class ActivationGifOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    layers: list[str] | None = None  # default: every block of the network, in order
    image: int = Field(0, ge=0, le=10_000)  # which probe image
    channels: int = Field(27, ge=1, le=1024)  # first N channels per layer
    formats: list[Literal["gif", "mp4"]] = Field(default_factory=_gif_only, min_length=1)
    fps: float = Field(1.5, gt=0, le=60)
    size: tuple[Annotated[int, Field(ge=64, le=4096)], Annotated[int, Field(ge=64, le=4096)]] = (480, 508)  # frame width, height in pixels


@register_stage
class ActivationGifStage(ActivationsStage):
    name = "activation_gif"
    description = "one probe image, then its activations after each layer, as an animated GIF per epoch"
    Options = ActivationGifOptions  # type: ignore[assignment]
    default = False

    def layers(self, model: nn.Module) -> list[str]:
        from ..models import feature_blocks, resolve_layer

        if self.options.layers:
            return [resolve_layer(model, n)[0] for n in self.options.layers]
        return feature_blocks(model)

    def frames(self, ctx: StageContext) -> list[np.ndarray]:
        """Input frame, then one frame per layer: its first channels as a grid on its own colour scale."""
        from ..plotting import grey_rgb, mosaic, to_rgb
        from ..video import captioned_frame

        names, outputs, index = self.capture(ctx)
        label = ctx.data.classes[int(ctx.probe.y[index])]
        frames = [captioned_frame(grey_rgb(ctx.pixels(index)), f"input ({label}) · epoch {ctx.epoch}",
                                  self.options.size)]
        for step, name in enumerate(names, start=1):
            out = outputs[name][index]
            grid = mosaic(activation_tiles(out, self.options.channels))
            finite = grid[np.isfinite(grid)]
            low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
            rgb = to_rgb(grid, "viridis", low, max(high, low + 1e-6))
            shape = "×".join(map(str, out.shape))
            caption = f"{step}/{len(names)} {name} ({shape}) · {low:.2g}…{high:.2g}"
            frames.append(captioned_frame(rgb, caption, self.options.size))
        return frames

    def run(self, ctx: StageContext) -> None:
        ctx.video("activation_gif", self.frames(ctx), self.options.fps, list(self.options.formats))
