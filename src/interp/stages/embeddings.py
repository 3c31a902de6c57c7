"""Penultimate features of evaluation images: TensorBoard projector (labels + thumbnails) and a 2-D picture."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .base import Stage, register_stage

if TYPE_CHECKING:
    from ..analysis.runner import StageContext

PROJECTOR_POINT_LIMIT = 10_000  # the projector's t-SNE works on at most this many points
SPRITE_LIMIT = 8192  # the projector cannot load larger sprite sheets (pixels per side)


class EmbeddingsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    points: int = Field(1000, ge=10, le=PROJECTOR_POINT_LIMIT)
    # t-SNE costs seconds, so by default only the last epoch (and `interp analyze`) gets one.
    tsne: Literal["final", "always", "never"] = "final"
    perplexity: float = Field(30.0, gt=1, le=1000)


@register_stage
class EmbeddingsStage(Stage):
    name = "embeddings"
    description = ("penultimate features of up to 1,000 evaluation images → TensorBoard projector with class "
                   "labels and thumbnails; PCA (and t-SNE at the end) as a PNG")
    Options = EmbeddingsOptions
    needs = frozenset({"images", "classes", "features"})

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
        self._draw(ctx, features.numpy(), labels, names)

    def _draw(self, ctx: StageContext, features: np.ndarray, labels: np.ndarray, names: list[str]) -> None:
        want_tsne = self.options.tsne == "always" or (self.options.tsne == "final" and ctx.final)
        tsne = self.options.perplexity if want_tsne and len(features) > self.options.perplexity * 3 else None
        # the projections (t-SNE takes seconds) are computed by the drawing worker, off the training path
        ctx.draw("embeddings", draw_embeddings, features, labels, list(names), ctx.epoch, tsne)


def draw_embeddings(features: np.ndarray, labels: np.ndarray, names: list[str], epoch: int,
                    perplexity: float | None) -> Any:
    """PCA of the features, and t-SNE when ``perplexity`` is given, coloured by true class."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    from ..plotting import figure

    views = []
    pca = PCA(n_components=2, random_state=0)
    views.append(("PCA", pca.fit_transform(features),
                  f"explains {pca.explained_variance_ratio_.sum():.0%} of the variance"))
    if perplexity is not None:
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=0)
        views.append(("t-SNE", tsne.fit_transform(features), f"perplexity {perplexity:g}"))
    fig, axes = figure(1, len(views), panel=4.6)
    for ax, (title, points, note) in zip(axes[0], views, strict=True):
        for c, name in enumerate(names):
            mine = labels == c
            ax.scatter(points[mine, 0], points[mine, 1], s=5, color=f"C{c % 10}", label=name, alpha=0.8,
                       linewidths=0)
        ax.set_title(f"{title} ({note})")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal", adjustable="datalim")
    axes[0, -1].legend(markerscale=3, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.suptitle(f"penultimate features ({features.shape[1]}-d) of {len(features)} evaluation images, "
                 f"epoch {epoch}; colour = true class")
    return fig
