"""Numbers that say whether an attribution map deserves belief.

- **Deletion / insertion** (Petsiuk et al. 2018, RISE): rank pixels by the map, replace the top-ranked
  ones by the baseline (deletion) or reveal them on the baseline (insertion), and follow the softmax
  probability of the true class. A faithful map makes the deletion curve fall faster, and the insertion
  curve rise faster, than a random ranking does. The area under each curve (trapezoid rule over the
  fraction perturbed, both ends included) sums it up.
- **Model randomization** (Adebayo et al. 2018): re-initialize the layers from the top down and
  recompute the map. A map that still looks the same (high Spearman rank correlation of |map|) does not
  depend on what the network learned.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "CORRELATION_LIMIT",
    "Cascade",
    "auc",
    "cascade_layers",
    "perturbation_curves",
    "random_rankings",
    "rank_pixels",
    "randomization_cascade",
    "spearman",
    "verdict",
]

CORRELATION_LIMIT = 0.5  # above this after full randomization, a map ignores the learned weights


def rank_pixels(maps: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """(B, H, W) maps → (B, H·W) pixel indices, most important first. Larger values rank higher
    (signed maps: positive evidence first); ties are broken at random, not in raster order."""
    flat = maps.detach().flatten(1).float().cpu()
    shuffle = torch.randperm(flat.shape[1], generator=generator)
    order = torch.argsort(flat[:, shuffle], dim=1, descending=True, stable=True)
    return shuffle[order]


def random_rankings(batch: int, pixels: int, generator: torch.Generator) -> Tensor:
    """(B, pixels) independent random pixel orders."""
    return torch.stack([torch.randperm(pixels, generator=generator) for _ in range(batch)])


@torch.no_grad()
def perturbation_curves(model: nn.Module, x: Tensor, target: Tensor, baseline: Tensor, ranking: Tensor,
                        steps: int = 20, mode: str = "deletion", batch_size: int = 1024) -> Tensor:
    """Softmax probability of ``target`` as the top-ranked pixels are deleted or inserted.

    ``x``, ``baseline``: (B, C, H, W); ``ranking``: (B, H·W) from :func:`rank_pixels`. Returns (B, steps + 1):
    column k is the probability with a fraction k/steps of the pixels perturbed (one mask for all channels).
    All B·(steps + 1) images go through the model in batches of ``batch_size``.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be deletion or insertion, not {mode!r}")
    b, c, h, w = x.shape
    pixels = h * w
    position = torch.empty_like(ranking)  # position[b, p] = rank of pixel p
    position.scatter_(1, ranking, torch.arange(pixels).expand_as(ranking).contiguous())
    counts = torch.round(torch.linspace(0, pixels, steps + 1)).long()  # pixels perturbed at each step
    masks = (position[:, None, :] < counts[None, :, None]).to(x.device)  # (B, steps+1, H·W)
    masks = masks.view(b, steps + 1, 1, h, w)
    start, end = (x, baseline) if mode == "deletion" else (baseline, x)
    images = torch.where(masks, end[:, None], start[:, None]).view(b * (steps + 1), c, h, w)
    targets = target.repeat_interleave(steps + 1)
    probs = []
    for i in range(0, len(images), batch_size):
        logits = model(images[i:i + batch_size])
        probs.append(torch.softmax(logits.float(), dim=1).gather(1, targets[i:i + batch_size, None])[:, 0])
    return torch.cat(probs).view(b, steps + 1).cpu()


def auc(curves: Tensor) -> Tensor:
    """Area under curves sampled at evenly spaced fractions 0 … 1 (both ends included), trapezoid rule."""
    steps = curves.shape[-1] - 1
    return torch.trapezoid(curves, dx=1.0 / steps, dim=-1)


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two maps (ties get their average rank); NaN if either is constant."""
    from scipy.stats import spearmanr

    x, y = a.detach().flatten().double().cpu().numpy(), b.detach().flatten().double().cpu().numpy()
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(spearmanr(x, y).statistic)


def cascade_layers(model: nn.Module) -> list[str]:
    """Names of the linear and conv layers, from the output back to the input (normalization layers keep
    their weights: they rescale, they do not decide)."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    names = [name for name, module in model.named_modules() if isinstance(module, kinds)]
    return names[::-1]


@dataclass
class Cascade:
    """The randomization check of one method: after each step, the layers randomized so far and the
    mean (over images) Spearman correlation of |map| with the trained network's |map|."""

    layers: list[str]  # layer randomized at each step, top first
    correlations: list[float]  # one per step
    maps: list[Tensor]  # (B, H, W) after each step (for the figure)
    trained: Tensor  # (B, H, W): the map every step is compared with

    @property
    def final(self) -> float:
        """Correlation with every layer randomized."""
        return self.correlations[-1] if self.correlations else math.nan


def randomization_cascade(model: nn.Module, compute: Callable[[nn.Module], Tensor], trained: Tensor | None = None,
                          seed: int = 0, layers: list[str] | None = None) -> Cascade:
    """Re-initialize ``layers`` (default :func:`cascade_layers`) one after another on a copy of ``model``,
    cumulatively from the top, recomputing ``compute(copy) → (B, H, W)`` after each step and comparing
    abs(map) with abs(``trained``) by Spearman correlation, image by image.

    Every map, the trained one included when ``trained`` is None, is computed from the same random
    state, so a noisy method (SmoothGrad) sees the same noise each time and only the weights differ."""
    clone = copy.deepcopy(model).eval()
    modules = dict(clone.named_modules())
    names = layers if layers is not None else cascade_layers(clone)
    generator_state = torch.random.get_rng_state()
    weights = torch.Generator().manual_seed(seed)  # the re-initializations' own random stream

    def seeded(net: nn.Module) -> Tensor:
        torch.manual_seed(seed + 1)
        return compute(net).detach()

    correlations, maps = [], []
    try:
        if trained is None:
            trained = seeded(clone)
        for name in names:
            module = modules[name]
            torch.random.set_rng_state(weights.get_state())
            module.reset_parameters()  # type: ignore[operator]
            weights.set_state(torch.random.get_rng_state())
            current = seeded(clone)
            values = [spearman(trained[i].abs(), current[i].abs()) for i in range(len(trained))]
            finite = [v for v in values if math.isfinite(v)]
            correlations.append(float(np.mean(finite)) if finite else math.nan)
            maps.append(current.cpu())
    finally:
        torch.random.set_rng_state(generator_state)
    return Cascade(list(names), correlations, maps, trained.cpu())


def verdict(deletion: float, insertion: float, random_deletion: float, random_insertion: float,
            correlation: float | None) -> str:
    """'trust' when the map beats random at both deletion and insertion and (when checked) no longer
    resembles itself once the weights are random; otherwise 'doubt: <reasons>'."""
    reasons = []
    if not deletion < random_deletion:
        reasons.append("del. ≥ random")
    if not insertion > random_insertion:
        reasons.append("ins. ≤ random")
    if correlation is not None and math.isfinite(correlation) and correlation > CORRELATION_LIMIT:
        reasons.append("ignores weights")
    return "trust" if not reasons else "doubt: " + ", ".join(reasons)
