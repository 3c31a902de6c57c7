"""Penultimate features of evaluation images: TensorBoard projector (labels + thumbnails) and a 2-D picture."""

from __future__ import annotations

import math
import textwrap
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..analysis.records import register_view
from .base import Stage, register_stage

if TYPE_CHECKING:
    from .base import StageContext

PROJECTOR_POINT_LIMIT = 10_000  # the projector's t-SNE works on at most this many points
SPRITE_LIMIT = 8192  # the projector cannot load larger sprite sheets (pixels per side)


class EmbeddingsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    points: int = Field(1000, ge=10, le=PROJECTOR_POINT_LIMIT)
    # t-SNE costs seconds, so by default only the last epoch (and `interp analyze`) gets one.
    tsne: Literal["final", "always", "never"] = "final"
    perplexity: float = Field(30.0, gt=1, le=1000)
    # t-SNE's cost grows faster than the points: it maps a fixed random subset of at most this many.
    tsne_points: int = Field(500, ge=10, le=PROJECTOR_POINT_LIMIT)
    # Gradient-descent iterations (scikit-learn's least: 250, its default: 1,000). On 500 points the map is
    # settled by 500: the KL divergence within 2 % of 1,000 iterations' and the same neighbours kept, in
    # half the time.
    tsne_iterations: int = Field(500, ge=250, le=10_000)


@register_stage
class EmbeddingsStage(Stage):
    name = "embeddings"
    description = ("penultimate features of up to 1,000 evaluation images → TensorBoard projector with class "
                   "labels and thumbnails; PCA (and t-SNE at the end) as a PNG")
    Options = EmbeddingsOptions
    needs = frozenset({"images", "classes", "features"})
    projector_noticed = False

    def run(self, ctx: StageContext) -> None:
        import torch
        import torch.nn.functional as F

        data = ctx.data
        count = min(self.options.points, len(data.eval_x))
        generator = torch.Generator().manual_seed(0)
        index = torch.randperm(len(data.eval_x), generator=generator)[:count].sort().values.to(data.device)
        features = ctx.eval_features()[index].flatten(1).float().cpu()  # (N, D), no second forward pass
        logits = ctx.eval_logits()[index]
        x = data.normalize(data.eval_x[index])
        labels = data.eval_y[index].cpu().numpy()
        predicted = logits.argmax(dim=1).cpu().numpy()
        names = data.classes
        metadata = [[names[t], names[p]] for t, p in zip(labels, predicted, strict=True)]
        thumbnails = data.denormalize(x).cpu()
        side = math.ceil(math.sqrt(count)) * thumbnails.shape[-1]
        if side > SPRITE_LIMIT:
            size = SPRITE_LIMIT // math.ceil(math.sqrt(count))
            thumbnails = F.interpolate(thumbnails, size=(size, size), mode="area")
        ctx.sink.embedding(f"{ctx.tag.replace('/', '-')}embeddings", features, metadata, ["label", "predicted"],
                           thumbnails, ctx.step)
        problem = getattr(ctx.sink, "projector_problem", None)
        if problem and not self.projector_noticed:  # once per run
            self.projector_noticed = True
            ctx.notice(f"embeddings: {problem}")
        want_tsne = self.options.tsne == "always" or (self.options.tsne == "final" and ctx.final)
        subset = min(self.options.tsne_points, len(features))
        tsne = self.options.perplexity if want_tsne and subset > self.options.perplexity * 3 else None
        if tsne is not None:
            why = None
        elif not want_tsne:
            why = ("off (embeddings: {tsne: never})" if self.options.tsne == "never" else
                   "drawn at the last epoch (embeddings: {tsne: always} for every epoch)")
        else:
            why = f"needs more than {3 * self.options.perplexity:g} points for perplexity {self.options.perplexity:g}"
        # the projections (t-SNE takes seconds) are computed by the view, in the drawing worker
        ctx.draw("embeddings", draw_embeddings, features.numpy(), labels, predicted, list(names), ctx.epoch, tsne,
             why, self.options.tsne_points, self.options.tsne_iterations)


def principal_components(features: np.ndarray, count: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``features`` projected on their first ``count`` principal components, and each
    component's share of the variance. Signed like scikit-learn's PCA (each component's largest coefficient
    positive), so the picture keeps its orientation; a missing component (fewer features) is all zero."""
    x = np.asarray(features, dtype=np.float64)
    centred = x - x.mean(axis=0)
    _, singular, axes = np.linalg.svd(centred, full_matrices=False)
    axes = axes[:count]
    signs = np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])
    axes = axes * np.where(signs == 0, 1.0, signs)[:, None]
    variance = singular**2
    share = variance[:count] / variance.sum() if variance.sum() > 0 else np.zeros(len(axes))
    points = np.zeros((len(x), count))
    points[:, :len(axes)] = centred @ axes.T
    return points, np.pad(share, (0, count - len(share)))


def tsne_map(features: np.ndarray, perplexity: float, iterations: int = 500) -> np.ndarray:
    """(N, 2): scikit-learn's Barnes-Hut t-SNE of ``features`` (PCA start, seeded) after ``iterations``
    gradient steps (``max_iter``, called ``n_iter`` before scikit-learn 1.5)."""
    from sklearn.manifold import TSNE

    steps = "max_iter" if "max_iter" in TSNE().get_params() else "n_iter"
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=0, **{steps: iterations})
    return np.asarray(tsne.fit_transform(features))


@register_view
def draw_embeddings(features: np.ndarray, labels: np.ndarray, predicted: np.ndarray, names: list[str], epoch: int,
                    perplexity: float | None, no_tsne: str | None = None, tsne_points: int | None = None,
                    tsne_iterations: int = 500) -> Any:
    """PCA of the features and, when ``perplexity`` is given, t-SNE, coloured by true class, misclassified
    points ringed in black. Without t-SNE its panel says why (``no_tsne``), so the figure keeps its size."""
    from ..plotting import figure

    points, share = principal_components(features, 2)
    subset = np.arange(len(features))
    if tsne_points is not None and tsne_points < len(features):  # the same subset at every epoch
        subset = np.sort(np.random.default_rng(0).choice(len(features), tsne_points, replace=False))
    tsne = None if perplexity is None else tsne_map(features[subset], perplexity, tsne_iterations)
    wrong = labels != predicted
    ring = _rings_shown(wrong)
    fig, axes = figure(1, 2, panel=4.6)
    pca, other = axes[0]
    _scatter(pca, points, labels, wrong, ring, names)
    if tsne is not None:
        other.set_title(f"t-SNE of {len(subset)} of them (perplexity {perplexity:g})")
        _scatter(other, tsne, labels[subset], wrong[subset], ring, names)
        other.set_xlabel("t-SNE 1")
        other.set_ylabel("t-SNE 2")
    else:
        other.set_title("t-SNE")
        other.text(0.5, 0.5, textwrap.fill(no_tsne or "not computed", 34), ha="center", va="center",
                   transform=other.transAxes, color="0.4")
        for spine in other.spines.values():
            spine.set_color("0.8")
    for ax in (pca, other):
        ax.set_xticks([])
        ax.set_yticks([])
    handles, texts = pca.get_legend_handles_labels()
    fig.legend(handles, texts, title="true class", markerscale=2, fontsize=7, loc="outside right center",
               frameon=False)
    pca.set_title(f"PCA (explains {share.sum():.0%} of the variance)")
    pca.set_xlabel(f"PC 1 ({share[0]:.0%})")
    pca.set_ylabel(f"PC 2 ({share[1]:.0%})")
    fig.suptitle(f"penultimate features ({features.shape[1]}-d) of {len(features)} evaluation images, epoch {epoch}; "
                 f"colour = true class, {wrong.mean():.1%} misclassified" + (" (ringed)" if ring else ""))
    return fig


def _rings_shown(wrong: np.ndarray) -> bool:
    """Whether misclassified points are ringed: not when most are (an untrained net), where rings would hide
    the colours."""
    return bool(wrong.mean() <= 0.5)


def _scatter(ax: Any, xy: np.ndarray, labels: np.ndarray, wrong: np.ndarray, ring: bool, names: list[str]) -> None:
    """The points coloured by true class (one legend entry each), the misclassified ones ringed."""
    for c, name in enumerate(names):
        mine = labels == c
        ax.scatter(xy[mine, 0], xy[mine, 1], s=6, color=f"C{c % 10}", label=name, alpha=0.8, linewidths=0)
    ringed = wrong & ring
    ax.scatter(xy[ringed, 0], xy[ringed, 1], s=22, facecolors="none", edgecolors="black", linewidths=0.6,
               label=f"misclassified ({int(ringed.sum())})" if ring else "_")
    ax.set_aspect("equal", adjustable="datalim")
