"""What makes a training step fast on the hardware at hand: mixed precision, channels_last, cuDNN's
autotuner, torch.compile, and per-batch augmentation on the device. Each is a config choice."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import UserError

__all__ = ["Speed", "crop_flip", "speed_for"]


def crop_flip(images: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """A random ``pad``-pixel-shifted crop (zero padding) and a random horizontal flip per image, for a
    uint8 batch (B, C, H, W) on any device; the random numbers come from ``generator`` (on the CPU), so a
    resumed run draws the same ones."""
    batch, channels, height, width = images.shape
    # non_blocking: the host does not wait for the device to take the numbers (a CUDA copy from pageable
    # memory is staged before the call returns)
    offsets = torch.randint(0, 2 * pad + 1, (batch, 2), generator=generator).to(images.device, non_blocking=True)
    flips = (torch.rand(batch, generator=generator) < 0.5).to(images.device, non_blocking=True)
    padded = nn.functional.pad(images, (pad, pad, pad, pad))
    rows = offsets[:, 0, None] + torch.arange(height, device=images.device)  # (B, H)
    cols = offsets[:, 1, None] + torch.arange(width, device=images.device)  # (B, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    b = torch.arange(batch, device=images.device)[:, None, None, None]
    c = torch.arange(channels, device=images.device)[None, :, None, None]
    return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]


@dataclass
class Speed:
    autocast: Callable[[], contextlib.AbstractContextManager[Any]]
    channels_last: bool
    scaler: Any  # torch.amp.GradScaler for fp16, else None
    augment: Callable[[Tensor, torch.Generator], Tensor] | None

    def inputs(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x


def speed_for(model: nn.Module, device: torch.device, precision: str, channels_last: bool | str, augment: str,
              is_image: bool) -> Speed:
    """The settings for ``model`` on ``device``; ``model`` is moved to channels_last in place when chosen."""
    if precision == "fp16" and device.type != "cuda":
        raise UserError("train.precision fp16 needs a CUDA device; use bf16 on the CPU")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def autocast() -> contextlib.AbstractContextManager[Any]:
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=dtype)

    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    use_cl = is_image and has_conv and (channels_last is True or (channels_last == "auto" and device.type == "cuda"))
    if use_cl:
        model.to(memory_format=torch.channels_last)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    if augment == "crop_flip" and not is_image:
        raise UserError("data.augment crop_flip needs images")
    return Speed(autocast, use_cl, scaler, crop_flip if augment == "crop_flip" else None)
