"""Attribution methods, computed with Captum, and their reduction to one 2-D map per image.

The stages draw these maps and the ``trust`` stage scores them; both call the functions here so that
a method means the same thing everywhere. Every target is the **true class** logit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "METHODS",
    "Method",
    "blurred",
    "expected_gradients",
    "gradcam",
    "gradcam_layer",
    "integrated_gradients",
    "saliency",
    "smoothgrad",
    "white",
]

BLUR_SIGMA = 0.1  # the blurred baseline's Gaussian standard deviation, as a fraction of the image's shorter side


def saliency(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """|∂ logit[target] / ∂x| (Simonyan et al. 2013), same shape as ``x``."""
    from captum.attr import Saliency

    return Saliency(model).attribute(x.detach().requires_grad_(True), target=target, abs=True).detach()


def smoothgrad(model: nn.Module, x: Tensor, target: Tensor, samples: int = 16, noise: float = 0.15) -> Tensor:
    """Saliency averaged over ``samples`` noisy copies of ``x`` (Smilkov et al. 2017).

    ``noise`` is the noise's standard deviation as a fraction of the input's value range."""
    from captum.attr import NoiseTunnel, Saliency

    spread = float(x.max() - x.min()) or 1.0
    tunnel = NoiseTunnel(Saliency(model))
    return tunnel.attribute(x.detach().requires_grad_(True), nt_type="smoothgrad", nt_samples=samples, nt_samples_batch_size=max(1, 256 // len(x)),
                            stdevs=noise * spread, target=target, abs=True).detach()


def integrated_gradients(model: nn.Module, x: Tensor, target: Tensor, baseline: Tensor, steps: int = 50,
                         internal_batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Integrated gradients from ``baseline`` to ``x`` (Sundararajan et al. 2017) and Captum's convergence
    delta per image: Σ attributions − (F(x) − F(baseline)), which is 0 for an exact integral."""
    from captum.attr import IntegratedGradients

    attributions, delta = IntegratedGradients(model).attribute(
        x, baselines=baseline, target=target, n_steps=steps, internal_batch_size=internal_batch_size,
        return_convergence_delta=True)
    return attributions.detach(), delta.detach()


def expected_gradients(model: nn.Module, x: Tensor, target: Tensor, low: Tensor, high: Tensor, references: int = 4,
                       samples: int = 50, internal_batch_size: int = 256) -> Tensor:
    """Expected gradients (Erion et al. 2021) with uniform-noise references, same shape as ``x``.

    ``references`` images of uniform noise between ``low`` (black) and ``high`` (white) are drawn from
    torch's random state; each attribution is the mean over ``samples`` draws of ∂F(x′)/∂x′ · (x − x′ᵣ),
    x′ = x′ᵣ + α(x − x′ᵣ) with a random reference x′ᵣ and α ~ U(0, 1). That is Captum's GradientShap
    without input noise. The attributions add up to F(x) − mean F(x′ᵣ) in expectation only."""
    import numpy as np
    from captum.attr import GradientShap

    noise = torch.rand((references, *x.shape[1:]), device=x.device)
    refs = low[:1] + (high[:1] - low[:1]) * noise  # (references, C, H, W)
    chunk = max(1, internal_batch_size // samples)  # Captum expands every image ``samples`` times at once
    # Captum draws the references and the α from numpy's global generator: seed it from torch's (so that
    # torch.manual_seed makes the map reproducible) and give it back as it was
    state = np.random.get_state()
    np.random.seed(int(torch.randint(0, 2**31 - 1, (1,))))
    try:
        parts = [GradientShap(model).attribute(x[i:i + chunk], baselines=refs, n_samples=samples, stdevs=0.0,
                                               target=target[i:i + chunk]).detach()
                 for i in range(0, len(x), chunk)]
    finally:
        np.random.set_state(state)
    return torch.cat(parts)


def blurred(x: Tensor, sigma: float = BLUR_SIGMA) -> Tensor:
    """A Gaussian-blurred copy of each image (B, C, H, W), standard deviation ``sigma`` × the shorter side,
    cut at 3 σ (SciPy, mirrored edges: the pixel at the edge is not repeated). The weights add up to 1, so
    blurring normalized values is the same as normalizing blurred pixels. (SciPy rather than torchvision:
    importing torchvision imports ``torch._dynamo``, a second or more.)"""
    from scipy import ndimage

    side = min(int(x.shape[-2]), int(x.shape[-1]))
    spread = max(sigma * side, 1e-3)
    radius = max(0, min(math.ceil(3 * spread), side - 1))  # mirroring needs the radius below the side
    values = x.detach().cpu().double().numpy()
    out = ndimage.gaussian_filter(values, (0, 0, spread, spread), mode="mirror", radius=(0, 0, radius, radius))
    return torch.from_numpy(out).to(device=x.device, dtype=x.dtype)


def white(black: Tensor, data: Any = None) -> Tensor:
    """The all-white image (pixel value 1) in the space of ``black``: (1 − mean) / std per channel when the
    data's normalization is known, else one unit above black."""
    mean, std = getattr(data, "mean", ()), getattr(data, "std", ())
    if not mean or not std:
        return black + 1.0
    values = [(1.0 - m) / s for m, s in zip(mean, std, strict=True)]
    return torch.tensor(values, device=black.device, dtype=black.dtype).view(1, -1, 1, 1).expand_as(black).clone()


def gradcam(model: nn.Module, layer: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """Grad-CAM (Selvaraju et al. 2017) at ``layer``, ReLU'd and upsampled bilinearly to the input: (B, 1, H, W)."""
    from captum.attr import LayerGradCam

    cam = LayerGradCam(model, layer).attribute(x, target=target, relu_attributions=True).detach()
    return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)


def to_map(attributions: Tensor, signed: bool) -> Tensor:
    """(B, C, H, W) → (B, H, W): summed over channels when signed (contributions add up), else the
    largest absolute value across channels."""
    if signed:
        return attributions.sum(dim=1)
    return attributions.abs().amax(dim=1)


@dataclass(frozen=True)
class Method:
    """An attribution method as the trust stage sees it: ``compute(model, x, y, black, options) → (B, H, W)``.

    ``options`` may hold ``steps`` (integration points), ``blur_sigma``, ``noise_baselines``, ``white`` (the
    all-white image, for the uniform-noise references), ``smoothgrad_samples``, ``layer`` (Grad-CAM).
    ``signed`` maps rank pixels by value (positive evidence first); unsigned ones by magnitude."""

    name: str
    stage: str  # the stage whose presence in the run switches this method on
    signed: bool
    compute: Callable[[nn.Module, Tensor, Tensor, Tensor, dict], Tensor]


def _saliency_map(model: nn.Module, x: Tensor, y: Tensor, baseline: Tensor, options: dict) -> Tensor:
    return to_map(saliency(model, x, y), signed=False)


def _smoothgrad_map(model: nn.Module, x: Tensor, y: Tensor, baseline: Tensor, options: dict) -> Tensor:
    return to_map(smoothgrad(model, x, y, options.get("smoothgrad_samples", 16),
                             options.get("smoothgrad_noise", 0.15)), signed=False)


def _ig_map(model: nn.Module, x: Tensor, y: Tensor, baseline: Tensor, options: dict) -> Tensor:
    attributions, _ = integrated_gradients(model, x, y, baseline, options.get("steps", 50),
                                           options.get("internal_batch_size", 256))
    return to_map(attributions, signed=True)


def _ig_blur_map(model: nn.Module, x: Tensor, y: Tensor, baseline: Tensor, options: dict) -> Tensor:
    return _ig_map(model, x, y, blurred(x, options.get("blur_sigma", BLUR_SIGMA)), options)


def _expected_gradients_map(model: nn.Module, x: Tensor, y: Tensor, baseline: Tensor, options: dict) -> Tensor:
    high = options["white"] if "white" in options else baseline + 1.0
    return to_map(expected_gradients(model, x, y, baseline, high, options.get("noise_baselines", 4),
                                     options.get("steps", 50), options.get("internal_batch_size", 256)), signed=True)


def gradcam_layer(model: nn.Module, name: str | None = None, example: Tensor | None = None) -> tuple[str, nn.Module]:
    """The layer Grad-CAM looks at: ``name`` (short or full), else the last block with spatial output
    (larger than 1×1 for ``example``, when given)."""
    from .models import last_spatial_layer, resolve_layer

    found = resolve_layer(model, name) if name else last_spatial_layer(model, example)
    if found is None:
        raise ValueError("Grad-CAM needs a convolutional layer; the model has none")
    return found


def _gradcam_map(model: nn.Module, x: Tensor, y: Tensor, baseline: Tensor, options: dict) -> Tensor:
    return gradcam(model, gradcam_layer(model, options.get("layer"), x)[1], x, y)[:, 0]


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("saliency", "saliency", False, _saliency_map),
        Method("smoothgrad", "saliency", False, _smoothgrad_map),
        Method("integrated_gradients", "integrated_gradients", True, _ig_map),  # from black
        Method("integrated_gradients_blur", "integrated_gradients", True, _ig_blur_map),  # from the blurred image
        Method("expected_gradients", "integrated_gradients", True, _expected_gradients_map),  # from uniform noise
        Method("gradcam", "gradcam", False, _gradcam_map),
    )
}


@torch.no_grad()
def target_logits(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """logit[target] for each row of ``x``: (B,)."""
    return model(x).gather(1, target.view(-1, 1))[:, 0]
