"""A video of the first layer's weight images coming to life during training."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .base import Stage, register_stage
from .neurons import first_layer_tiles, neuron_grid

if TYPE_CHECKING:
    from torch import nn

    from ..analysis.sink import Sink
    from ..data import Data
    from .base import StageContext


def _gif_only() -> list[Literal["gif", "mp4"]]:
    return ["gif"]


class NeuronVideoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    every: int = Field(10, ge=1, le=1_000_000)  # capture a frame every K optimiser steps
    formats: list[Literal["gif", "mp4"]] = Field(default_factory=_gif_only, min_length=1)
    fps: float = Field(10.0, gt=0, le=60)
    max_units: int = Field(64, ge=1, le=4096)  # units / filters per frame
    max_frames: int = Field(400, ge=2, le=5000)  # later frames are thinned to stay under this
    size: int = Field(640, ge=64, le=4096)  # longest side of the weight grid in pixels (enlarged by a whole factor)


@register_stage
class NeuronVideoStage(Stage):
    name = "neuron_video"
    description = ("the first layer's weight images (the neurons grid) every K training steps → "
                   "animations/neuron_video.gif (and .mp4)")
    Options = NeuronVideoOptions
    needs = frozenset({"images", "training"})
    default = False

    def __init__(self, options: BaseModel | None = None):
        super().__init__(options)
        self.frames: list[tuple[int, int, np.ndarray]] = []  # (step, epoch, tiles)
        self.input_shape: tuple[int, ...] = ()

    def prepare(self, model: nn.Module, data: Data) -> None:
        self.input_shape = data.input_shape

    def capture(self, model: nn.Module, step: int, epoch: int) -> None:
        self.frames.append((step, epoch, first_layer_tiles(model, self.input_shape, self.options.max_units)))
        if len(self.frames) > self.options.max_frames:  # keep the first frame, drop every second one after it
            self.frames = self.frames[:1] + self.frames[2::2]

    def run(self, ctx: StageContext) -> None:
        if ctx.epoch == 0 and not self.frames:
            self.capture(ctx.model, 0, 0)  # the untrained weights open the video

    def on_step(self, model: nn.Module, step: int, epoch: int) -> None:
        if step % self.options.every == 0:
            self.capture(model, step, epoch)

    def render_frames(self) -> list[np.ndarray]:
        """Every captured grid on one colour scale (the largest |w| over the whole video)."""
        from ..plotting import SIGNED_CMAP, to_rgb
        from ..video import captioned_frame

        limit = max(float(np.abs(tiles).max()) for _, _, tiles in self.frames) or 1e-12
        frames = []
        frame_size: tuple[int, int] | None = None
        for step, epoch, tiles in self.frames:
            grid, _ = neuron_grid(tiles)
            if grid.ndim == 2:
                rgb = to_rgb(grid, SIGNED_CMAP, -limit, limit)
            else:  # RGB filters: already mapped per channel around grey
                rgb = (np.nan_to_num(grid, nan=0.82) * 255).astype(np.uint8)
            if frame_size is None:
                zoom = max(1, self.options.size // max(rgb.shape[:2]))
                frame_size = (max(rgb.shape[1] * zoom, 360), rgb.shape[0] * zoom + 28)
            caption = f"first-layer weights · step {step} · epoch {epoch} · colour scale ±{limit:.3f}"
            frames.append(captioned_frame(rgb, caption, frame_size))
        return frames

    def on_train_end(self, model: nn.Module, sink: Sink, notice: Callable[[str], None]) -> None:
        if len(self.frames) < 2:
            notice("neuron_video: fewer than two frames captured; lower neuron_video.every")
            return
        paths = sink.video("animations/neuron_video", self.render_frames(), self.options.fps,
                           list(self.options.formats))
        notice(f"neuron_video: {len(self.frames)} frames → {', '.join(str(p) for p in paths)}")
