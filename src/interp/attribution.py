"""Attribution methods, one registry: each method is one small class in :data:`METHODS` (its name, its
colour in every plot, whether its map is signed, what it needs, and how it computes — Captum is the
engine). The ``attributions`` stage draws and the ``trust`` stage scores the methods of
``analysis.methods``; :func:`attribute` computes one for code of your own. Every target is the **true
class** logit.

```python
from interp.attribution import attribute
maps = attribute("guided_backprop", model, x, target=y)       # shaped like x, as Captum returns it
cams = attribute("gradcam", model, x, y, layer="layer4")       # (B, 1, H, W), upsampled to the input
```
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "Method",
    "attribute",
    "batch_size",
    "check_methods",
    "blurred",
    "expected_gradients",
    "gradcam",
    "gradcam_layer",
    "integrated_gradients",
    "method_class",
    "register_method",
    "saliency",
    "smoothgrad",
    "white",
]

BLUR_SIGMA = 0.1  # the blurred baseline's Gaussian standard deviation, as a fraction of the image's shorter side


def batch_size(x: Tensor, elsewhere: int = 256) -> int:
    """Images per forward (and backward) pass when a method or a check expands its inputs: 64 on a CPU,
    where a conv net runs fastest in small batches (a ResNet-18 at 64 pixels on one core: 14 % faster than
    256, forward and backward), ``elsewhere`` on an accelerator."""
    return 64 if x.device.type == "cpu" else elsewhere


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
    return tunnel.attribute(x.detach().requires_grad_(True), nt_type="smoothgrad", nt_samples=samples, nt_samples_batch_size=max(1, batch_size(x) // len(x)),
                            stdevs=noise * spread, target=target, abs=True).detach()


def integrated_gradients(model: nn.Module, x: Tensor, target: Tensor, baseline: Tensor, steps: int = 50,
                         internal_batch_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Integrated gradients from ``baseline`` to ``x`` (Sundararajan et al. 2017) and Captum's convergence
    delta per image: Σ attributions − (F(x) − F(baseline)), which is 0 for an exact integral."""
    from captum.attr import IntegratedGradients

    attributions, delta = IntegratedGradients(model).attribute(
        x, baselines=baseline, target=target, n_steps=steps, internal_batch_size=internal_batch_size or batch_size(x),
        return_convergence_delta=True)
    return attributions.detach(), delta.detach()


def expected_gradients(model: nn.Module, x: Tensor, target: Tensor, low: Tensor, high: Tensor, references: int = 4,
                       samples: int = 50, internal_batch_size: int | None = None) -> Tensor:
    """Expected gradients (Erion et al. 2021) with uniform-noise references, same shape as ``x``.

    ``references`` images of uniform noise between ``low`` (black) and ``high`` (white) are drawn from
    torch's random state; each attribution is the mean over ``samples`` draws of ∂F(x′)/∂x′ · (x − x′ᵣ),
    x′ = x′ᵣ + α(x − x′ᵣ) with a random reference x′ᵣ and α ~ U(0, 1). That is Captum's GradientShap
    without input noise. The attributions add up to F(x) − mean F(x′ᵣ) in expectation only."""
    import numpy as np
    from captum.attr import GradientShap

    noise = torch.rand((references, *x.shape[1:]), device=x.device)
    refs = low[:1] + (high[:1] - low[:1]) * noise  # (references, C, H, W)
    chunk = max(1, (internal_batch_size or batch_size(x)) // samples)  # Captum expands every image ``samples`` times at once
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


def gradcam_layer(model: nn.Module, name: str | None = None, example: Tensor | None = None) -> tuple[str, nn.Module]:
    """The layer Grad-CAM looks at: ``name`` (short or full), else the last block with spatial output
    (larger than 1×1 for ``example``, when given)."""
    from .models import last_spatial_layer, resolve_layer

    found = resolve_layer(model, name) if name else last_spatial_layer(model, example)
    if found is None:
        raise ValueError("Grad-CAM needs a convolutional layer; the model has none")
    return found


# -- the registry: one small class per method ------------------------------------------------------------
class Method:
    """An attribution method: ``name``, whether its map is ``signed`` (pixels ranked by value, positive
    evidence first; unsigned maps by magnitude), what it ``needs`` ("conv": a layer with spatial output),
    its ``colour`` in every plot, and :meth:`attribute`, which returns attributions shaped like the input
    (or (B, 1, H, W) for a class-activation map). Its keyword options have defaults; the stages offer
    ``baseline`` (the black image), ``white``, ``steps``, ``samples``, ``blur_sigma``, ``references`` and
    ``layer``, and each method takes the ones its :meth:`attribute` names.

    A method of one's own is a subclass registered with :func:`register_method`, or named in a config as
    ``package.module:Class``."""

    name: ClassVar[str] = ""
    signed: ClassVar[bool] = False
    needs: ClassVar[frozenset[str]] = frozenset()
    colour: ClassVar[str] = "#8c6d31"
    description: ClassVar[str] = ""

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor, **options: Any) -> Tensor:
        raise NotImplementedError

    def skip_reason(self, model: nn.Module, example: Tensor | None = None) -> str | None:
        """Why this method cannot run on ``model`` (None: it can)."""
        if "conv" in self.needs:
            from .models import last_spatial_layer

            if last_spatial_layer(model, example) is None:
                return "needs a convolutional layer; the model has none"
        return None

    def map(self, model: nn.Module, inputs: Tensor, target: Tensor, **offered: Any) -> Tensor:
        """One map per image (B, H, W), from the ``offered`` options this method takes."""
        from .imports import accepted_keywords

        with quiet():
            values = self.attribute(model, inputs, target, **accepted_keywords(self.attribute, offered)).detach()
        return to_map(values, self.signed)  # a class-activation map (B, 1, H, W) is its one channel


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    """Add ``cls`` to :data:`METHODS` under its ``name`` (a decorator)."""
    if not cls.name:
        raise ValueError(f"method {cls.__qualname__} has no name")
    METHODS[cls.name] = cls
    return cls


def method_class(name: str) -> type[Method]:
    """A registered method by name, or ``package.module:Class`` imported (and registered) on demand."""
    from .imports import registered

    return registered(name, METHODS, "method", Method, "interp.attribution.Method", register_method)


def attribute(method: str | Method, model: nn.Module, inputs: Tensor, target: Tensor | int,
              **options: Any) -> Tensor:
    """Attributions of ``method`` (a name, ``package.module:Class`` or a :class:`Method`) for ``target``
    (a class index or one per input): shaped like ``inputs``, or (B, 1, H, W) for Grad-CAM-like maps.

    >>> attribute("guided_backprop", model, x, target=3)            # doctest: +SKIP
    >>> attribute("occlusion", model, x, y, window=4, stride=2)     # doctest: +SKIP
    """
    found = method if isinstance(method, Method) else method_class(method)()
    if isinstance(target, int):
        target = torch.full((len(inputs),), target, dtype=torch.long, device=inputs.device)
    reason = found.skip_reason(model, inputs)
    if reason:
        raise ValueError(f"{found.name}: {reason}")
    with quiet():
        return found.attribute(model, inputs, target, **options).detach()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Without Captum's notices that it hooks the model's ReLUs (printed on every call)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Setting (forward, )?backward hooks")
        yield


def check_methods(names: Sequence[str] | None, source: str = "analysis.methods") -> tuple[str, ...]:
    """The method names a config or caller chose (None: :data:`DEFAULT_METHODS`), each known or imported;
    a mistake is a :class:`~interp.errors.UserError` naming ``source``."""
    from .errors import UserError

    if names is None:
        return DEFAULT_METHODS
    if isinstance(names, str) or not names:
        raise UserError(f"{source}: expected a non-empty list of method names, got {names!r}")
    chosen: list[str] = []
    for name in names:
        try:
            found = method_class(str(name)).name
        except ValueError as exc:
            raise UserError(f"{source}: {exc}") from None
        if found in chosen:
            raise UserError(f"{source}: method {found!r} is listed twice")
        chosen.append(found)
    return tuple(chosen)


DEFAULT_METHODS = ("saliency", "smoothgrad", "integrated_gradients", "integrated_gradients_blur", "expected_gradients",
                   "guided_backprop", "gradcam")


def _zeros(x: Tensor, baseline: Tensor | None) -> Tensor:
    return torch.zeros_like(x) if baseline is None else baseline


@register_method
class SaliencyMethod(Method):
    name, colour = "saliency", "#1f77b4"
    description = "|∂ logit / ∂x| (Simonyan et al. 2013)"

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:  # type: ignore[override]
        return saliency(model, inputs, target)


@register_method
class SmoothGradMethod(Method):
    name, colour = "smoothgrad", "#ff7f0e"
    description = "saliency averaged over noisy copies (Smilkov et al. 2017)"

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor, samples: int = 16,  # type: ignore[override]
                  noise: float = 0.15) -> Tensor:
        return smoothgrad(model, inputs, target, samples, noise)


@register_method
class InputXGradientMethod(Method):
    name, colour, signed = "input_x_gradient", "#17becf", True
    description = "x · ∂ logit / ∂x"

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:  # type: ignore[override]
        from captum.attr import InputXGradient

        return InputXGradient(model).attribute(inputs.detach().requires_grad_(True), target=target)


@register_method
class IntegratedGradientsMethod(Method):
    name, colour, signed = "integrated_gradients", "#d62728", True
    description = "integrated gradients from the black image (Sundararajan et al. 2017)"

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor,  # type: ignore[override]
                  baseline: Tensor | None = None, steps: int = 50, internal_batch_size: int | None = None) -> Tensor:
        return integrated_gradients(model, inputs, target, _zeros(inputs, baseline), steps, internal_batch_size)[0]


@register_method
class BlurIntegratedGradientsMethod(Method):
    name, colour, signed = "integrated_gradients_blur", "#9467bd", True
    description = "integrated gradients from a blurred copy of the image"

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor,  # type: ignore[override]
                  blur_sigma: float = BLUR_SIGMA, steps: int = 50, internal_batch_size: int | None = None) -> Tensor:
        return integrated_gradients(model, inputs, target, blurred(inputs, blur_sigma), steps, internal_batch_size)[0]


@register_method
class ExpectedGradientsMethod(Method):
    name, colour, signed = "expected_gradients", "#8c564b", True
    description = "expected gradients from uniform-noise references (Erion et al. 2021)"

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor,  # type: ignore[override]
                  baseline: Tensor | None = None, white: Tensor | None = None, references: int = 4,
                  steps: int = 50, internal_batch_size: int | None = None) -> Tensor:
        low = _zeros(inputs, baseline)
        high = white if white is not None else low + 1.0
        return expected_gradients(model, inputs, target, low, high, references, steps, internal_batch_size)


def reused_layer(model: nn.Module, example: Tensor | None) -> str | None:
    """The name of a layer that one forward pass of ``example`` calls more than once (a ResNet block's
    ReLU), or None. DeepLIFT and LRP keep state per layer, so they need every layer called once."""
    if example is None:
        return None
    calls: dict[str, int] = {}
    hooks = [m.register_forward_hook(lambda *_, n=n: calls.__setitem__(n, calls.get(n, 0) + 1))
             for n, m in model.named_modules() if n and not list(m.children())]
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for hook in hooks:
            hook.remove()
    return next((n for n, count in calls.items() if count > 1), None)


@register_method
class DeepLiftMethod(Method):
    name, colour, signed = "deeplift", "#393b79", True
    description = "DeepLIFT, Rescale rule, from the black image (Shrikumar et al. 2017)"

    def skip_reason(self, model: nn.Module, example: Tensor | None = None) -> str | None:
        reused = reused_layer(model, example)
        return f"needs every layer called once per forward pass; {reused} is called more than once" if reused else None

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor,  # type: ignore[override]
                  baseline: Tensor | None = None) -> Tensor:
        from captum.attr import DeepLift

        return DeepLift(model).attribute(inputs.detach().requires_grad_(True), baselines=_zeros(inputs, baseline),
                                         target=target)


@register_method
class OcclusionMethod(Method):
    name, colour, signed = "occlusion", "#bcbd22", True
    description = "the drop in the logit when a square patch becomes the black image (Zeiler & Fergus 2014)"

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor,  # type: ignore[override]
                  baseline: Tensor | None = None, window: int | None = None, stride: int | None = None,
                  internal_batch_size: int | None = None) -> Tensor:
        from captum.attr import Occlusion

        side = min(int(inputs.shape[-2]), int(inputs.shape[-1]))
        window = window or max(2, side // 7)
        stride = stride or max(1, window // 2)
        return Occlusion(model).attribute(inputs, sliding_window_shapes=(int(inputs.shape[1]), window, window),
                                          strides=(int(inputs.shape[1]), stride, stride),
                                          baselines=_zeros(inputs, baseline), target=target,
                                          perturbations_per_eval=max(1, (internal_batch_size or batch_size(inputs)) // len(inputs)))


@register_method
class GuidedBackpropMethod(Method):
    name, colour = "guided_backprop", "#e377c2"
    description = "gradients with negative ones stopped at every ReLU (Springenberg et al. 2015)"

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:  # type: ignore[override]
        from captum.attr import GuidedBackprop

        return GuidedBackprop(model).attribute(inputs.detach().requires_grad_(True), target=target)


@register_method
class GradCamMethod(Method):
    name, colour, needs = "gradcam", "#2ca02c", frozenset({"conv"})
    description = "Grad-CAM at the last convolutional block (Selvaraju et al. 2017)"

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor,  # type: ignore[override]
                  layer: str | None = None) -> Tensor:
        return gradcam(model, gradcam_layer(model, layer, inputs)[1], inputs, target)


@register_method
class GuidedGradCamMethod(Method):
    name, colour, needs = "guided_gradcam", "#843c39", frozenset({"conv"})
    description = "guided backprop × Grad-CAM (Selvaraju et al. 2017)"

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor,  # type: ignore[override]
                  layer: str | None = None) -> Tensor:
        from captum.attr import GuidedGradCam

        found = gradcam_layer(model, layer, inputs)[1]
        return GuidedGradCam(model, found).attribute(inputs.detach().requires_grad_(True), target=target,
                                                     interpolate_mode="bilinear")


@register_method
class GradCamPlusPlusMethod(Method):
    name, colour, needs = "gradcam_plus_plus", "#98df8a", frozenset({"conv"})
    description = "Grad-CAM++: positive gradients weighted per position (Chattopadhay et al. 2018)"

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor,  # type: ignore[override]
                  layer: str | None = None) -> Tensor:
        from captum._utils.gradient import compute_layer_gradients_and_eval

        found = gradcam_layer(model, layer, inputs)[1]
        gradients, activations = compute_layer_gradients_and_eval(model, found, inputs, target_ind=target)
        g, a = gradients[0].detach(), activations[0].detach()  # (B, K, h, w)
        g2 = g * g
        alpha = g2 / (2 * g2 + a.sum(dim=(2, 3), keepdim=True) * g2 * g + 1e-6)  # the closed form for exp(logit)
        weights = (torch.where(g != 0, alpha, 0.0) * g.clamp(min=0)).sum(dim=(2, 3), keepdim=True)
        cam = (weights * a).sum(dim=1, keepdim=True).clamp(min=0)
        return F.interpolate(cam, size=inputs.shape[-2:], mode="bilinear", align_corners=False)


@register_method
class LRPMethod(Method):
    name, colour, signed = "lrp", "#637939", True
    description = "layer-wise relevance propagation, ε rule (Bach et al. 2015), by Captum"

    def skip_reason(self, model: nn.Module, example: Tensor | None = None) -> str | None:
        from captum.attr._core.lrp import SUPPORTED_LAYERS_WITH_RULES, SUPPORTED_NON_LINEAR_LAYERS

        covered = (*SUPPORTED_LAYERS_WITH_RULES, *SUPPORTED_NON_LINEAR_LAYERS)
        leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
        other = sorted({type(m).__name__ for _, m in leaves if not isinstance(m, covered)})
        if other:
            return f"LRP's rules do not cover {', '.join(other)}"
        reused = reused_layer(model, example)
        return f"needs every layer called once per forward pass; {reused} is called more than once" if reused else None

    def attribute(self, model: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:  # type: ignore[override]
        import copy

        from captum.attr import LRP

        net = copy.deepcopy(model)  # Captum puts its rules on the layers
        return LRP(net).attribute(inputs.detach().requires_grad_(True), target=target)


@torch.no_grad()
def target_logits(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """logit[target] for each row of ``x``: (B,)."""
    return model(x).gather(1, target.view(-1, 1))[:, 0]
