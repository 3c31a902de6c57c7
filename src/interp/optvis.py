"""Feature visualisation: an input optimised to make a unit (or a class logit) fire, kept natural.

The image is parametrised in the Fourier domain with a 1/f² spectrum (``decay``: its optimisation steps
favour broad structure over pixel noise), colour images through a decorrelated colour basis, squashed to [0, 1] by
a sigmoid around the data's mean pixel (``start``: a digit's image starts black, as digits' backgrounds are, not
grey) and normalised as the model's inputs are. Every step sees it jittered, scaled and rotated a little
(transformation robustness), and Adam follows the mean response. Greyscale models are handled natively:
one channel, no colour basis. Deterministic from ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["visualize"]

# the colour correlation of natural images (Lucid's, from ImageNet), its square root as a basis: optimising
# in it decorrelates the channels
_COLOUR = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
_COLOUR = _COLOUR / _COLOUR.norm(dim=0).max()


_SILENT = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid)  # flat at 0: no gradient from there


def _spectrum_scale(height: int, width: int, decay: float = 1.0) -> Tensor:
    fy = torch.fft.fftfreq(height)[:, None]
    fx = torch.fft.rfftfreq(width)[None, :]
    frequency = torch.sqrt(fx * fx + fy * fy)
    return 1.0 / torch.clamp(frequency, min=1.0 / max(height, width)) ** decay


def _transform(images: Tensor, generator: torch.Generator, jitter: int, scale: float, degrees: float) -> Tensor:
    """A random shift (up to ``jitter`` pixels), scale (1 ± ``scale``) and rotation (± ``degrees``) of each
    image, drawn from ``generator``."""
    n, _, height, width = images.shape
    draw = torch.rand(n, 4, generator=generator).to(images.device)
    angle = (draw[:, 0] * 2 - 1) * math.radians(degrees)
    factor = 1 + (draw[:, 1] * 2 - 1) * scale
    shift = (draw[:, 2:] * 2 - 1) * jitter * 2 / torch.tensor([width, height], device=images.device)
    cos, sin = torch.cos(angle) / factor, torch.sin(angle) / factor
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    return nn.functional.grid_sample(images, grid, padding_mode="reflection", align_corners=False)


def visualize(model: nn.Module, layer: str | None = None, unit: int | Sequence[int] | None = None,
              target: int | Sequence[int] | None = None, *, input_shape: tuple[int, int, int],
              mean: Sequence[float] | None = None, std: Sequence[float] | None = None, steps: int = 256,
              lr: float = 0.05, seed: int = 0, jitter: int = 2, scale: float = 0.1, degrees: float = 5.0,
              decay: float = 2.0, contrast: float = 1.0, start: Sequence[float] | None = None,
              device: torch.device | str | None = None,
              advance: Callable[[int], None] | None = None) -> Tensor:
    """Inputs that make ``model`` respond: one per ``unit`` of ``layer`` (a conv channel's mean over its
    positions, a dense unit's value; a ReLU's or a block ending in one: its input, the same where positive,
    so that a unit silent at the start still has a gradient) or per class ``target`` (its logit). ``input_shape`` (C, H, W) is the
    model's input; ``mean``/``std`` its normalisation. Each image starts at the pixel values ``start`` (default: the
normalisation's ``mean``, the data's mean pixel, kept within [0.1, 0.9]; 0.5 without one). Returns (n, C, H, W) in the model's input space (the
    pixels, in [0, 1], are ``x * std + mean``). The model's mode and weights are left as they were."""
    from .models import logits_of, resolve_layer

    if (layer is None) == (target is None):
        raise ValueError("give a layer (and units) or a target class, not both")
    chosen = [int(u) for u in ([unit] if isinstance(unit, int) else unit or [])] if layer else \
        [int(t) for t in ([target] if isinstance(target, int) else target)]  # type: ignore[union-attr]
    if layer is not None and not chosen:
        raise ValueError("name the units of the layer to visualise")
    channels, height, width = input_shape
    device = torch.device(device) if device is not None else next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    n = len(chosen)
    scale_f = _spectrum_scale(height, width, decay).to(device)
    spectrum = (torch.randn(n, channels, height, width // 2 + 1, 2, generator=generator) * 0.01).to(device)
    spectrum.requires_grad_(True)
    mean_t = torch.tensor(list(mean or [0.0] * channels), device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(list(std or [1.0] * channels), device=device).view(1, -1, 1, 1)
    colour = _COLOUR.to(device) if channels == 3 else None
    # where the sigmoid is centred: the data's mean pixel (within [0.1, 0.9], where the sigmoid still has slope)
    centre = torch.tensor(list(start or mean or [0.5] * channels), device=device).view(1, -1, 1, 1)
    offset = torch.logit(centre.clamp(0.1, 0.9))

    def pixels() -> Tensor:
        image = torch.fft.irfft2(torch.view_as_complex(spectrum) * scale_f, s=(height, width), norm="ortho")
        if colour is not None:
            image = torch.einsum("nchw,dc->ndhw", image, colour)
        return torch.sigmoid(image * contrast + offset)

    captured: list[Tensor] = []
    handle = None
    if layer is not None:  # a ReLU-like activation's input: a unit silent at the start still gets a gradient
        module = resolve_layer(model, layer)[1]
        last = module[-1] if isinstance(module, nn.Sequential) and len(module) else module
        if isinstance(last, _SILENT):
            handle = last.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
        else:
            handle = module.register_forward_hook(lambda _m, _i, output: captured.append(output))
    was_training = model.training
    model.eval()
    optimizer = torch.optim.Adam([spectrum], lr=lr)
    index = torch.arange(n, device=device)
    try:
        with torch.enable_grad():
            for _ in range(steps):
                captured.clear()
                x = (_transform(pixels(), generator, jitter, scale, degrees) - mean_t) / std_t
                out = model(x)
                if layer is None:
                    response = logits_of(out)[index, torch.tensor(chosen, device=device)]
                else:
                    picked = captured[0][index, torch.tensor(chosen, device=device)]  # (n, *spatial) or (n,)
                    response = picked.flatten(1).mean(dim=1) if picked.dim() > 1 else picked
                # the gradient of the image alone: the model's own .grad stay as they were
                (spectrum.grad,) = torch.autograd.grad(-response.sum(), [spectrum])
                optimizer.step()
                if advance is not None:
                    advance(1)
    finally:
        if handle is not None:
            handle.remove()
        model.train(was_training)
    with torch.no_grad():
        return ((pixels() - mean_t) / std_t).detach()
