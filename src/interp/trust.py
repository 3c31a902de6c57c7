"""Numbers that say whether an attribution map deserves belief, and how sure they are.

- **Deletion / insertion** (Petsiuk et al. 2018, RISE): rank pixels by the map, replace the top-ranked
  ones by a baseline (deletion) or reveal them on the baseline (insertion), and follow the softmax
  probability of the true class. A faithful map makes the deletion curve fall faster, and the insertion
  curve rise faster, than a random ranking does. The area under each curve (trapezoid rule over the
  fraction perturbed, both ends included) sums it up. The baseline is the metric's own, not a method's:
  black and a blurred copy of the image (:func:`interp.attribution.blurred`).
- **ROAD** (Rong et al. 2022, remove and debias): the removed pixels are filled in from their neighbours
  by noisy linear imputation (:func:`road_impute`), so that the filled image carries no trace of which
  pixels were removed; the probability of the true class is read with the most relevant (MoRF) or the
  least relevant (LeRF) pixels removed, at several percentages, and averaged.
- **Reference maps** that know nothing of the model, scored by the same metrics: a Sobel edge map of
  the image (:func:`sobel_map`) and random orders.
- **Model randomization** (Adebayo et al. 2018): re-initialize the layers from the top down and
  recompute the map. A map that still looks the same does not depend on what the network learned.
  Similarity is measured as Spearman's ρ of |map| over all pixels and over the image's foreground (the
  pixels that differ from black, where a map that multiplies by x − black is not zero by construction),
  ρ of the signed map, and SSIM of the normalized |maps| (:func:`ssim`).
- **Uncertainty**: every mean over images comes with a percentile bootstrap 95 % interval
  (:func:`bootstrap_interval`); a :class:`Check` passes or fails only when its whole interval lies on
  one side of its limit, and is uncertain otherwise.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "CORRELATION_LIMIT",
    "NEIGHBOURS",
    "Cascade",
    "Check",
    "auc",
    "bootstrap_interval",
    "cascade_layers",
    "class_probabilities",
    "degenerate",
    "deletion",
    "insertion",
    "randomization",
    "road",
    "foreground",
    "mass_inside",
    "middle_steps",
    "perturbation_curves",
    "random_rankings",
    "randomization_cascade",
    "rank_pixels",
    "road_curves",
    "road_impute",
    "shuffled_label_copy",
    "similarities",
    "sobel_map",
    "spearman",
    "ssim",
    "ssim_map",
    "verdict",
]

CORRELATION_LIMIT = 0.5  # above this after full randomization, a map ignores the learned weights
# ROAD's imputation weights (Rong et al. 2022): direct neighbours 1/6, diagonal ones 1/12 (they add up to 1).
NEIGHBOURS = (((-1, -1), 1 / 12), ((-1, 0), 1 / 6), ((-1, 1), 1 / 12), ((0, -1), 1 / 6), ((0, 1), 1 / 6),
              ((1, -1), 1 / 12), ((1, 0), 1 / 6), ((1, 1), 1 / 12))
MEASURES = ("spearman_abs", "spearman_abs_foreground", "spearman_signed_foreground", "ssim")


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


def _positions(ranking: Tensor) -> Tensor:
    """position[b, p] = the rank of pixel p in image b."""
    position = torch.empty_like(ranking)
    position.scatter_(1, ranking, torch.arange(ranking.shape[1]).expand_as(ranking).contiguous())
    return position


@torch.no_grad()
def class_probabilities(model: nn.Module, images: Tensor, targets: Tensor, batch_size: int | None = None) -> Tensor:
    """Softmax probability of ``targets`` for ``images`` (B,), on the CPU, in batches of ``batch_size``
    (None: 64 on a CPU, 1,024 elsewhere)."""
    from . import attribution

    batch_size = batch_size or attribution.batch_size(images, 1024)
    probs = []
    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size]
        if batch.dim() == 4 and batch.device.type == "cpu":  # a conv net's forward pass: 14 % faster on a CPU
            batch = batch.contiguous(memory_format=torch.channels_last)
        logits = model(batch)
        probs.append(torch.softmax(logits.float(), dim=1).gather(1, targets[i:i + batch_size, None])[:, 0])
    return torch.cat(probs).cpu()


@torch.no_grad()
def perturbation_curves(model: nn.Module, x: Tensor, target: Tensor, baseline: Tensor, ranking: Tensor,
                        steps: int = 20, mode: str = "deletion", batch_size: int | None = None,
                        tolerance: float | None = None, ends: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Softmax probability of ``target`` as the top-ranked pixels are deleted or inserted.

    ``x``, ``baseline``: (B, C, H, W); ``ranking``: (B, H·W) from :func:`rank_pixels`. Returns (B, steps + 1):
    column k is the probability with a fraction k/steps of the pixels perturbed (one mask for all channels).
    The perturbed images go through the model in batches of ``batch_size`` (None: 64 on a CPU, 1,024 elsewhere).

    With a ``tolerance``, the curve is computed coarse to fine: every fourth point first (every other one
    when ``steps`` is not a multiple of 4), then the point halfway between two computed ones only where
    they differ by more than ``tolerance``; elsewhere it is their mean (the segment is taken as straight).
    ``ends``: the probabilities at 0 % and 100 % (B,) when known (they are the same for every ranking: the
    image and the baseline), else computed."""
    from . import attribution

    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be deletion or insertion, not {mode!r}")
    batch_size = batch_size or attribution.batch_size(x, 1024)
    b, c, h, w = x.shape
    position = _positions(ranking).to(x.device)
    counts = torch.round(torch.linspace(0, h * w, steps + 1)).long().to(x.device)  # pixels perturbed per step
    start, end = (x, baseline) if mode == "deletion" else (baseline, x)

    def probabilities(images: Tensor, steps_of: Tensor) -> Tensor:
        """p(target) of image ``images[i]`` with ``counts[steps_of[i]]`` of its pixels perturbed."""
        out = []
        for i in range(0, len(images), batch_size):
            which, k = images[i:i + batch_size], steps_of[i:i + batch_size]
            masks = (position[which] < counts[k][:, None]).view(-1, 1, h, w)
            out.append(class_probabilities(model, torch.where(masks, end[which], start[which]), target[which], batch_size))
        return torch.cat(out) if out else torch.zeros(0)

    def fill(rows: Tensor, columns: Tensor) -> None:
        curves[rows, columns] = probabilities(rows.to(x.device), columns.to(x.device))

    curves = torch.zeros(b, steps + 1)
    first = 1 if ends is not None else 0
    if ends is not None:
        curves[:, 0], curves[:, steps] = ends[0].float().cpu(), ends[1].float().cpu()
    stride = 1 if tolerance is None else 4 if steps % 4 == 0 else 2 if steps % 2 == 0 else 1
    grid = torch.arange(first * stride, steps + 1 - first, stride)
    fill(torch.arange(b).repeat_interleave(len(grid)), grid.repeat(b))
    while stride > 1:
        stride //= 2  # the midpoints of the segments computed so far
        left = torch.arange(0, steps, 2 * stride)
        curves[:, left + stride] = (curves[:, left] + curves[:, left + 2 * stride]) / 2
        rows, segments = ((curves[:, left + 2 * stride] - curves[:, left]).abs() > tolerance).nonzero(as_tuple=True)
        if len(rows):
            fill(rows, left[segments] + stride)
    return curves


def auc(curves: Tensor) -> Tensor:
    """Area under curves sampled at evenly spaced fractions 0 … 1 (both ends included), trapezoid rule."""
    steps = curves.shape[-1] - 1
    return torch.trapezoid(curves, dx=1.0 / steps, dim=-1)


def _as_target(target: Tensor | int, inputs: Tensor) -> Tensor:
    if isinstance(target, int):
        return torch.full((len(inputs),), target, dtype=torch.long, device=inputs.device)
    return target.to(inputs.device)


def _as_maps(maps: Tensor, inputs: Tensor) -> Tensor:
    """(B, H, W) or attributions shaped like the inputs (summed over channels) → (B, H, W)."""
    if maps.dim() == 4:
        maps = maps.sum(dim=1)
    if maps.shape != (inputs.shape[0], *inputs.shape[-2:]):
        raise ValueError(f"maps of shape {tuple(maps.shape)} do not match inputs of shape {tuple(inputs.shape)}")
    return maps


def deletion(model: nn.Module, inputs: Tensor, maps: Tensor, target: Tensor | int, baseline: Tensor | None = None,
             steps: int = 20, seed: int = 0) -> Tensor:
    """Per image (B,), the area under the deletion curve: pixels ranked by ``maps`` (larger first; pass |map|
    to rank by magnitude) become ``baseline`` (default all zeros), the true class's probability is read at
    ``steps`` + 1 evenly spaced fractions. Lower is better."""
    return auc(perturbation_curves(model, inputs, _as_target(target, inputs),
                                   torch.zeros_like(inputs) if baseline is None else baseline,
                                   rank_pixels(_as_maps(maps, inputs), torch.Generator().manual_seed(seed)), steps,
                                   "deletion"))


def insertion(model: nn.Module, inputs: Tensor, maps: Tensor, target: Tensor | int, baseline: Tensor | None = None,
              steps: int = 20, seed: int = 0) -> Tensor:
    """Per image (B,), the area under the insertion curve (the pixels ranked by ``maps`` revealed on
    ``baseline``). Higher is better."""
    return auc(perturbation_curves(model, inputs, _as_target(target, inputs),
                                   torch.zeros_like(inputs) if baseline is None else baseline,
                                   rank_pixels(_as_maps(maps, inputs), torch.Generator().manual_seed(seed)), steps,
                                   "insertion"))


def road(model: nn.Module, inputs: Tensor, maps: Tensor, target: Tensor | int,
         percentages: Sequence[float] = (10, 30, 50, 70, 90), order: Literal["morf", "lerf"] = "morf",
         noise: float = 0.0, seed: int = 0) -> Tensor:
    """Per image (B,), ROAD's mean probability of the true class over ``percentages`` % of the pixels
    removed and imputed from their neighbours, the most relevant first (``morf``: lower is better) or the
    least relevant first (``lerf``: higher is better)."""
    ranking = rank_pixels(_as_maps(maps, inputs), torch.Generator().manual_seed(seed))
    return road_curves(model, inputs, _as_target(target, inputs), ranking, percentages, order, noise, seed).mean(dim=1)


def randomization(model: nn.Module, inputs: Tensor, target: Tensor | int, method: str = "saliency",
                  mask: Tensor | None = None, seed: int = 0, **options: Any) -> Cascade:
    """The model randomization cascade of an attribution ``method`` (a name of
    :data:`interp.attribution.METHODS`, with its ``options``): blocks re-initialized from the top, the map
    recomputed after each step and compared with the trained one (:class:`Cascade`: ``correlations``,
    ``top_values()``, ``final_values()``)."""
    from .attribution import method_class

    found = method_class(method)()
    wanted = _as_target(target, inputs)
    return randomization_cascade(model, lambda net: found.map(net, inputs, wanted, **options), seed=seed, mask=mask)


# -- ROAD ------------------------------------------------------------------------------------------------
Pairs = list[tuple[np.ndarray, np.ndarray, float]]  # (unknown i, unknown j > i, weight): A[i, j] = −weight


def road_impute(x: Tensor, removed: Tensor, noise: float = 0.0, seed: int = 0,
                solver: Literal["auto", "banded", "sparse"] = "auto") -> Tensor:
    """``x`` (N, C, H, W) with the pixels ``removed`` (N, H, W) filled by noisy linear imputation (ROAD).

    Each removed pixel takes the weighted mean of its neighbours inside the image (weights
    :data:`NEIGHBOURS`, renormalized at the border), the removed neighbours being unknowns too: one sparse
    linear system for all the images, solved exactly by SciPy. Numbered row by row, its unknowns couple only
    within W + 1 places of each other and the matrix is symmetric positive definite (every group of removed
    pixels touches a kept one), so up to W = 256 (``auto``) a banded Cholesky solve is the fastest, one
    per image, each with its own band (few removed pixels couple only a few places apart): 2.5–3 × faster
    than the sparse solver at 64 and 128 pixels, 1.3 × at 256. Wider images go to the general sparse
    solver (SuperLU), whose cost and memory grow more slowly with W.
    Gaussian noise of standard deviation ``noise`` (seeded) is then added to the filled pixels. An image
    removed entirely has nothing to impute from and is left as it was."""

    n, c, h, w = x.shape
    removed = removed.detach().cpu().bool().clone()
    removed[removed.flatten(1).all(dim=1)] = False
    mask = removed.numpy()
    values = x.detach().cpu().double().permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    count = int(mask.sum())
    if not count:
        return x.clone()
    # Every image gets a one-pixel frame, so that each neighbour of a pixel is a place in one flat array:
    # state −2 = outside the image, −1 = kept, k ≥ 0 = the k-th unknown (numbered image by image, row by row).
    hp, wp = h + 2, w + 2
    grid = np.full((n, hp, wp), -2, dtype=np.int64)
    grid[:, 1:-1, 1:-1] = -1
    grid[:, 1:-1, 1:-1][mask] = np.arange(count)
    state = grid.reshape(-1)
    frame = np.zeros((n, hp, wp, c))
    frame[:, 1:-1, 1:-1] = values
    framed = frame.reshape(-1, c)
    places = np.flatnonzero(state >= 0)  # the unknowns' places, in their order
    diagonal = np.zeros(count)
    right = np.zeros((count, c))
    pairs: Pairs = []  # the upper triangle
    for (dy, dx), weight in NEIGHBOURS:
        where = places + dy * wp + dx
        neighbour = state[where]
        diagonal += weight * (neighbour != -2)  # Σ weights of the neighbours that exist
        known = np.flatnonzero(neighbour == -1)
        right[known] += weight * framed[where[known]]  # kept neighbours: the right-hand side
        if (dy, dx) > (0, 0):  # each pair of removed neighbours once, from the earlier one
            later = np.flatnonzero(neighbour >= 0)
            pairs.append((later, neighbour[later], weight))
    with _one_blas_thread():  # small steps: BLAS threads would only wait on each other
        if solver == "banded" or (solver == "auto" and w <= 256):
            ends = np.concatenate([[0], np.cumsum(mask.reshape(n, -1).sum(axis=1))])  # each image's unknowns
            solution = np.concatenate([_banded_solve(diagonal[lo:hi], _within(pairs, lo, hi), right[lo:hi])
                                       for lo, hi in zip(ends[:-1], ends[1:], strict=True) if hi > lo])
        else:
            solution = _sparse_solve(diagonal, pairs, right)
    if noise > 0:
        solution = solution + noise * np.random.default_rng(seed).standard_normal(solution.shape)
    values = values.copy()
    values[mask] = solution  # boolean indexing visits the unknowns in their numbering order
    filled = torch.from_numpy(values).permute(0, 3, 1, 2)
    return filled.to(device=x.device, dtype=x.dtype).contiguous()


def _within(pairs: Pairs, low: int, high: int) -> Pairs:
    """The pairs of the unknowns ``low`` … ``high − 1`` (one image's: pairs never cross images), renumbered
    from 0. Each pair list is ordered by its first unknown, so an image's pairs are one slice."""
    out = []
    for first, later, weight in pairs:
        start, stop = np.searchsorted(first, [low, high])
        out.append((first[start:stop] - low, later[start:stop] - low, weight))
    return out


def _banded_solve(diagonal: np.ndarray, pairs: Pairs, right: np.ndarray) -> np.ndarray:
    from scipy.linalg import solveh_banded

    band = max([int((later - first).max()) for first, later, _ in pairs if len(first)], default=0)
    upper = np.zeros((band + 1, len(diagonal)))  # upper[band + i − j, j] = A[i, j] for i ≤ j (LAPACK's layout)
    upper[band] = diagonal
    for first, later, weight in pairs:
        upper[band + first - later, later] = -weight
    # the band matrix is ours alone: LAPACK factors it in place instead of copying it first
    return solveh_banded(upper, right, overwrite_ab=True, check_finite=False).reshape(right.shape)


def _sparse_solve(diagonal: np.ndarray, pairs: Pairs, right: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    count = len(diagonal)
    rows = np.concatenate([np.arange(count), *(p[0] for p in pairs), *(p[1] for p in pairs)])
    cols = np.concatenate([np.arange(count), *(p[1] for p in pairs), *(p[0] for p in pairs)])
    entries = np.concatenate([diagonal, *(np.full(len(p[0]), -p[2]) for p in pairs),
                              *(np.full(len(p[0]), -p[2]) for p in pairs)])
    system = coo_matrix((entries, (rows, cols)), shape=(count, count)).tocsc()  # duplicates would add up; none
    solution = spsolve(system, right if right.shape[1] > 1 else right[:, 0])
    return np.asarray(solution).reshape(right.shape)


def _one_blas_thread() -> Any:
    """A context in which BLAS/LAPACK run on one thread (threadpoolctl comes with scikit-learn)."""
    import contextlib

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - scikit-learn requires it
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


@torch.no_grad()
def road_curves(model: nn.Module, x: Tensor, target: Tensor, ranking: Tensor, percentages: Sequence[float],
                order: Literal["morf", "lerf"] = "morf", noise: float = 0.0, seed: int = 0,
                batch_size: int | None = None) -> Tensor:
    """(B, P): the probability of ``target`` with ``percentages`` % of the pixels removed and imputed by
    :func:`road_impute`, the most relevant first (``morf``: lower is better) or the least relevant first
    (``lerf``: higher is better). ``ranking`` as from :func:`rank_pixels`."""
    from . import attribution

    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be morf or lerf, not {order!r}")
    batch_size = batch_size or attribution.batch_size(x, 1024)
    b, _, h, w = x.shape
    pixels = h * w
    position = _positions(ranking)  # (B, H·W)
    counts = [round(p / 100 * pixels) for p in percentages]
    masks = torch.stack([position < k if order == "morf" else position >= pixels - k for k in counts], dim=1)
    filled = road_impute(x.repeat_interleave(len(counts), dim=0), masks.view(-1, h, w), noise, seed)
    return class_probabilities(model, filled, target.repeat_interleave(len(counts)), batch_size).view(b, len(counts))


# -- reference maps, degenerate maps, ground truth -----------------------------------------------------
def sobel_map(pixels: Tensor) -> Tensor:
    """(B, C, H, W) images → (B, H, W): the magnitude of the Sobel gradient (SciPy, reflect padding), the
    largest over the channels. A map made from the image alone, with no knowledge of the model."""
    from scipy import ndimage

    array = pixels.detach().cpu().double().numpy()
    out = np.zeros((array.shape[0], *array.shape[2:]))
    for i, image in enumerate(array):
        for channel in image:  # 2-D each: ndimage.sobel would smooth across the batch and channel axes too
            out[i] = np.maximum(out[i], np.hypot(ndimage.sobel(channel, axis=0), ndimage.sobel(channel, axis=1)))
    return torch.from_numpy(out).float()


def degenerate(maps: Tensor) -> Tensor:
    """(B, H, W) → (B,) bool: maps that cannot rank pixels — constant (all zero included) or not finite."""
    flat = maps.detach().flatten(1).double().cpu()
    finite = torch.isfinite(flat).all(dim=1)
    spread = torch.nan_to_num(flat.amax(dim=1) - flat.amin(dim=1), nan=0.0)
    return ~finite | (spread == 0)


def foreground(x: Tensor, black: Tensor) -> Tensor:
    """(B, H, W) bool: the pixels where the image differs from black in some channel."""
    return ((x - black).abs().amax(dim=1) > 1e-6).cpu()


def mass_inside(maps: Tensor, masks: Tensor) -> Tensor:
    """(B,): the fraction of each map's absolute mass inside ``masks`` (B, H, W) (NaN for an all-zero map)."""
    values = maps.detach().abs().double().cpu()
    total = values.flatten(1).sum(dim=1)
    inside = (values * masks.cpu()).flatten(1).sum(dim=1)
    return torch.where(total > 0, inside / total.clamp(min=1e-300), torch.full_like(total, math.nan)).float()


# -- similarity of maps --------------------------------------------------------------------------------
def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two maps: Pearson's r of their ranks, ties given their average rank
    (what scipy.stats.spearmanr computes, without its overhead or its second of import); NaN if either is
    constant."""
    x, y = a.detach().flatten().double().cpu().numpy(), b.detach().flatten().double().cpu().numpy()
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    rx, ry = average_ranks(x), average_ranks(y)
    rx -= rx.mean()
    ry -= ry.mean()
    return float(np.dot(rx, ry) / math.sqrt(np.dot(rx, rx) * np.dot(ry, ry)))


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1…n of ``values``, tied values sharing the mean of their ranks (scipy.stats.rankdata's default)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    first = np.concatenate([[True], ordered[1:] != ordered[:-1]])  # where each group of equal values starts
    starts = np.flatnonzero(first)
    sizes = np.diff(np.append(starts, len(values)))
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(starts + (sizes + 1) / 2, sizes)  # ranks start … start + size − 1, 1-based
    return ranks


def ssim_map(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, sigma: float = 1.5) -> np.ndarray:
    """The local SSIM of two images (H, W) (Wang et al. 2004): Gaussian-weighted means, variances and
    covariance (σ = 1.5, the window cut at 3.5σ: 11×11), C₁ = (0.01 L)², C₂ = (0.03 L)²."""
    from scipy.ndimage import gaussian_filter

    def local(z: np.ndarray) -> np.ndarray:
        return gaussian_filter(z, sigma, mode="reflect", truncate=3.5)

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mean_a, mean_b = local(a), local(b)
    var_a, var_b = local(a * a) - mean_a**2, local(b * b) - mean_b**2
    covariance = local(a * b) - mean_a * mean_b
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    return ((2 * mean_a * mean_b + c1) * (2 * covariance + c2)) / ((mean_a**2 + mean_b**2 + c1) * (var_a + var_b + c2))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, sigma: float = 1.5) -> float:
    """Mean SSIM of two images (H, W), away from the border (the windows that fit: 5 pixels in)."""
    values = ssim_map(a, b, data_range, sigma)
    pad = int(3.5 * sigma + 0.5)
    if min(values.shape) > 2 * pad:
        values = values[pad:-pad, pad:-pad]
    return float(values.mean())


def _unit(values: np.ndarray) -> np.ndarray | None:
    low, high = float(values.min()), float(values.max())
    return None if not high > low else (values - low) / (high - low)


def similarities(trained: Tensor, current: Tensor, mask: Tensor | None = None) -> dict[str, np.ndarray]:
    """Per image (B,), how alike two sets of maps (B, H, W) are: Spearman ρ of |map| over all pixels and
    over ``mask`` (the foreground), ρ of the signed maps over ``mask``, and SSIM of the |maps| scaled to
    [0, 1]. NaN where a map is constant."""
    out = {name: np.full(len(trained), math.nan) for name in MEASURES}
    for i in range(len(trained)):
        t, c = trained[i].detach().double().cpu(), current[i].detach().double().cpu()
        out["spearman_abs"][i] = spearman(t.abs(), c.abs())
        inside = mask[i].cpu() if mask is not None else torch.ones_like(t, dtype=torch.bool)
        out["spearman_abs_foreground"][i] = spearman(t.abs()[inside], c.abs()[inside])
        out["spearman_signed_foreground"][i] = spearman(t[inside], c[inside])
        a, b = _unit(t.abs().numpy()), _unit(c.abs().numpy())
        if a is not None and b is not None:
            out["ssim"][i] = ssim(a, b)
    return out


def _nanmean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else math.nan


# -- model randomization -----------------------------------------------------------------------------
WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # what a randomization step re-initializes


def cascade_layers(model: nn.Module) -> list[str]:
    """The cascade's steps, from the output back to the input: the model's blocks that hold linear or conv
    layers (the children of ``features`` when it is a Sequential, and the model's other children; a
    ResNet's ``fc``, ``layer4`` … ``layer1``, ``conv1``), each a step that re-initializes every linear and
    conv layer inside it. Normalization layers keep their weights: they rescale, they do not decide."""
    prefix, root = "", model
    while len(children := list(root.named_children())) == 1 and not isinstance(children[0][1], WEIGHTED):
        prefix, root = f"{prefix}{children[0][0]}.", children[0][1]
    blocks: list[str] = []
    for name, child in root.named_children():
        inner = child.named_children() if name == "features" and isinstance(child, nn.Sequential) else [(None, child)]
        for sub, module in inner:
            full = f"{prefix}{name}" if sub is None else f"{prefix}{name}.{sub}"
            if any(isinstance(m, WEIGHTED) for m in module.modules()):
                blocks.append(full)
    return blocks[::-1]


def middle_steps(count: int) -> range:
    """Of a cascade of ``count`` steps, those the verdict does not read: after the top third (at least one
    step, :attr:`Cascade.top`) and before the last."""
    return range(max(1, count // 3), count - 1)


@dataclass
class Cascade:
    """The randomization check of one method: after each step, the layers randomized so far and, per
    image, how alike its map is to the trained network's (:func:`similarities`)."""

    layers: list[str]  # the block re-initialized at each step, top first
    scores: list[dict[str, np.ndarray]]  # one per step: measure → (B,) per image
    maps: list[Tensor]  # (B, H, W) after each step (for the figure)
    trained: Tensor  # (B, H, W): the map every step is compared with
    measure: str = "spearman_abs_foreground"  # the one the verdict reads

    def mean(self, measure: str | None = None) -> list[float]:
        """Mean over images (NaNs left out) of ``measure`` (default: the verdict's), one per step."""
        return [_nanmean(step[measure or self.measure]) for step in self.scores]

    @property
    def correlations(self) -> list[float]:
        return self.mean()

    @property
    def final(self) -> float:
        """The verdict's measure with every layer randomized."""
        return self.correlations[-1] if self.scores else math.nan

    def final_values(self, measure: str | None = None) -> np.ndarray:
        """Per image, ``measure`` with every layer randomized."""
        return self.scores[-1][measure or self.measure] if self.scores else np.array([])

    def joined(self, other: Cascade) -> Cascade:
        """This cascade and ``other`` (the same steps on more images), image after image."""
        scores = [{m: np.concatenate([a[m], b[m]]) for m in a} for a, b in zip(self.scores, other.scores, strict=True)]
        maps = [torch.cat([a, b]) for a, b in zip(self.maps, other.maps, strict=True)]
        return Cascade(self.layers, scores, maps, torch.cat([self.trained, other.trained]), self.measure)

    @property
    def top(self) -> int:
        """How many steps re-initialize the top of the network, the layers that decide the class: the first
        third of the cascade (at least one step)."""
        return middle_steps(len(self.layers)).start

    @property
    def middle(self) -> range:
        """The steps the verdict does not read: between the :attr:`top` ones and the last."""
        return middle_steps(len(self.layers))

    def top_values(self, measure: str | None = None) -> np.ndarray:
        """Per image, the mean of ``measure`` over the :attr:`top` steps (Adebayo et al. 2018: Guided Backprop's
        maps barely change there, so they cannot show what the network learned)."""
        if not self.scores:
            return np.array([])
        return np.mean([step[measure or self.measure] for step in self.scores[: self.top]], axis=0)


def randomization_cascade(model: nn.Module, compute: Callable[[nn.Module], Tensor], trained: Tensor | None = None,
                          seed: int = 0, layers: list[str] | None = None, mask: Tensor | None = None,
                          at: Collection[int] | None = None) -> Cascade:
    """Re-initialize ``layers`` (default :func:`cascade_layers`: blocks, each step re-initializing the linear
    and conv layers inside it) one after another on a copy of ``model``,
    cumulatively from the top, recomputing ``compute(copy) → (B, H, W)`` after each step and comparing it
    with ``trained`` image by image (:func:`similarities`, ``mask`` = the foreground; the verdict reads ρ of
    |map| on the foreground, or over all pixels when there is no mask).

    Every map, the trained one included when ``trained`` is None, is computed from the same random
    state, so a noisy method (SmoothGrad) sees the same noise each time and only the weights differ.
    ``at``: the steps (0 = the first) after which maps are computed (default: all); the others still
    re-initialize their block, and their similarities and maps are NaN."""
    clone = copy.deepcopy(model).eval()
    modules = dict(clone.named_modules())
    names = layers if layers is not None else cascade_layers(clone)
    generator_state = torch.random.get_rng_state()
    weights = torch.Generator().manual_seed(seed)  # the re-initializations' own random stream

    def seeded(net: nn.Module) -> Tensor:
        torch.manual_seed(seed + 1)
        return compute(net).detach()

    scores, maps = [], []
    try:
        if trained is None:
            trained = seeded(clone)
        for step, name in enumerate(names):
            block = modules[name]
            torch.random.set_rng_state(weights.get_state())
            for module in block.modules():
                if isinstance(module, WEIGHTED):
                    module.reset_parameters()  # type: ignore[operator]
            weights.set_state(torch.random.get_rng_state())
            if at is not None and step not in at:
                scores.append({measure: np.full(len(trained), math.nan) for measure in MEASURES})
                maps.append(torch.full(trained.shape, math.nan))
                continue
            current = seeded(clone)
            scores.append(similarities(trained, current, mask))
            maps.append(current.cpu())
    finally:
        torch.random.set_rng_state(generator_state)
    measure = "spearman_abs_foreground" if mask is not None else "spearman_abs"
    return Cascade(list(names), scores, maps, trained.cpu(), measure)


def shuffled_label_copy(model: nn.Module, train_x: Tensor, train_y: Tensor, normalize: Callable[[Tensor], Tensor],
                        epochs: int, initial_state: dict[str, Tensor] | None = None, batch_size: int = 128,
                        lr: float = 1e-3, seed: int = 0) -> nn.Module:
    """Adebayo's data randomization test: a copy of ``model``, started from ``initial_state`` (else freshly
    re-initialized), trained with Adam (``lr``, ``batch_size``) for ``epochs`` epochs on the training images
    with their labels permuted at random (seeded). Returned in eval mode; ``model`` is untouched."""
    clone = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        if initial_state is not None:
            clone.load_state_dict(initial_state)
        else:
            for module in clone.modules():
                if hasattr(module, "reset_parameters") and module is not clone:
                    module.reset_parameters()  # type: ignore[operator]
        labels = train_y[torch.randperm(len(train_y), generator=generator).to(train_y.device)]
        optimiser = torch.optim.Adam(clone.parameters(), lr=lr)
        clone.train()
        for _ in range(max(1, epochs)):
            order = torch.randperm(len(train_x), generator=generator).to(train_x.device)
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                optimiser.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(clone(normalize(train_x[batch])), labels[batch]).backward()
                optimiser.step()
    finally:
        torch.random.set_rng_state(state)
    return clone.eval()


# -- uncertainty and the verdict ----------------------------------------------------------------------
def bootstrap_interval(values: Sequence[float] | np.ndarray | Tensor, resamples: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (NaNs left out): the mean of ``resamples``
    draws with replacement, each as many as the values, from a seeded generator; (NaN, NaN) when empty."""
    array = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=np.float64).ravel()
    array = array[np.isfinite(array)]
    if not len(array):
        return math.nan, math.nan
    draws = np.random.default_rng(seed).integers(0, len(array), size=(resamples, len(array)))
    means = array[draws].mean(axis=1)
    tail = 50 * (1 - level)
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Check:
    """One condition of a verdict: ``value`` (a mean over images, with its 95 % interval ``low`` … ``high``)
    must lie below ``limit`` (above it when ``above``). It passes when the whole interval is on the right
    side, fails when the whole interval is on the wrong side, and is uncertain when it straddles."""

    name: str  # what is compared: "deletion vs random (blur)"
    fails: str  # said when it fails: "del. ≥ random (blur)"
    unsure: str  # said when it is uncertain: "del. ≈ random (blur)"
    value: float
    low: float
    high: float
    limit: float = 0.0
    above: bool = False

    @property
    def outcome(self) -> Literal["pass", "fail", "uncertain", "n/a"]:
        if not all(math.isfinite(v) for v in (self.value, self.low, self.high)):
            return "n/a"
        if self.above:
            good, bad = self.low > self.limit, self.high <= self.limit
        else:
            good, bad = self.high < self.limit, self.low >= self.limit
        return "pass" if good else "fail" if bad else "uncertain"

    def to_json(self) -> dict[str, Any]:
        return {"check": self.name, "value": self.value, "interval": [self.low, self.high], "limit": self.limit,
                "needs": "above" if self.above else "below", "outcome": self.outcome}


def verdict(checks: Sequence[Check], also_failed: Sequence[str] = ()) -> str:
    """'trust' when every check passes; 'doubt: <reasons>' when one fails (or ``also_failed`` names a
    reason found elsewhere); else 'uncertain: <reasons>' when an interval straddles its limit."""
    failed = [*also_failed, *(c.fails for c in checks if c.outcome == "fail")]
    unsure = [c.unsure for c in checks if c.outcome == "uncertain"]
    if failed:
        return "doubt: " + ", ".join(failed + unsure)
    if unsure:
        return "uncertain: " + ", ".join(unsure)
    return "trust"
