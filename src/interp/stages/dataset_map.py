"""The dataset map: which training examples the model learns easily, finds hard, forgets, or thinks are
mislabelled — from every example's numbers at every training epoch (:mod:`interp.analysis.dynamics`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..analysis.dynamics import AMBIGUOUS_VARIABILITY, CELLS, HARD_CONFIDENCE, REGIONS, cartography
from ..analysis.records import register_view
from .base import Stage, Summary, register_stage

if TYPE_CHECKING:
    from .base import StageContext

MAP_POINTS = 20_000  # the data map draws a fixed random subset of at most this many examples


class DatasetMapOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # tracked examples × classes held on the device during an epoch; past it, a fixed random subset is followed
    cells: int = Field(CELLS, ge=1, le=1 << 31)
    gallery: int = Field(24, ge=0, le=200)  # the most likely label issues drawn
    points: int = Field(1000, ge=0, le=10_000)  # training examples in the projector, at the last epoch (0: none)


@register_stage
class DatasetMapStage(Stage):
    name = "dataset_map"
    description = ("every training example's confidence, variability, forgetting events and area under the "
                   "margin over the epochs (from the training steps' own logits): the data map, label issues")
    Options = DatasetMapOptions
    needs = frozenset({"classes", "dynamics"})
    projector_noticed = False

    def run(self, ctx: StageContext) -> Summary:
        history = ctx.dynamics.history
        epochs = history.until(ctx.epoch)
        columns = cartography(epochs)
        index, labels = history.index, history.labels
        flagged, region = columns["flagged"], columns["region"]
        n = len(index)
        ctx.record("flagged_fraction", float(flagged.mean()))
        for r, name in enumerate(REGIONS):
            ctx.record(f"{name}_fraction", float((region == r).mean()))
        ctx.record("mean_forgetting", float(columns["forgetting"].mean()))
        ctx.keep("examples", {"index": index, "label": labels, **columns})
        ctx.keep("epochs", [e.epoch for e in epochs])
        ctx.keep("size", history.size)
        classes = list(ctx.data.classes)
        ctx.keep("classes", classes)
        ctx.draw("data_map", draw_data_map, columns["confidence"], columns["variability"], columns["correctness"],
                 columns["aum"], flagged, ctx.epoch, len(epochs), n, history.size)
        top = _ranked(columns["score"])[: self.options.gallery]
        if ctx.data.is_image and len(top):
            pixels = _pixels(ctx, index[top])
            ctx.draw("label_issues", draw_label_issues, pixels, index[top], labels[top], columns["predicted"][top],
                     columns["score"][top], classes, ctx.epoch, int(flagged.sum()), n)
        if self.options.points and ctx.data.is_image and ctx.final:  # the columns over the whole training
            self._projector(ctx, index, labels, columns)
        shares = [(region == r).sum() for r in range(len(REGIONS))]
        rows = [[name, int(count), f"{count / n:.1%}"] for name, count in zip(REGIONS, shares, strict=True)]
        rows.append(["label issues (AUM < 0, wrong now)", int(flagged.sum()), f"{flagged.mean():.1%}"])
        followed = "" if n == history.size else f" (a fixed random {n:,} of {history.size:,})"
        return Summary(f"Dataset map: {n:,} training examples{followed} over {len(epochs)} epochs",
                       ["region", "examples", "share"], rows,
                       [f"ambiguous: variability ≥ {AMBIGUOUS_VARIABILITY}; hard: confidence < {HARD_CONFIDENCE}",
                        "interp examples <run> --label-issues lists them"], terminal=False)

    def _projector(self, ctx: StageContext, index: np.ndarray, labels: np.ndarray, columns: dict[str, Any]) -> None:
        """The training examples' penultimate features in TensorBoard's projector, with their columns as
        metadata (colour by region, by label issue …; a click shows the image): every flagged one first
        (up to half the points), then a fixed random rest."""
        import torch

        from ..analysis.evaluation import features_of

        count = min(self.options.points, len(index))
        flagged = np.flatnonzero(columns["flagged"])[: count // 2]
        rest = np.setdiff1d(np.arange(len(index)), flagged)
        rest = np.random.default_rng(0).permutation(rest)[: count - len(flagged)]
        chosen = np.sort(np.concatenate([flagged, rest]))
        data = ctx.data
        where = torch.as_tensor(index[chosen], device=data.device)
        features = features_of(ctx.model, data, data.train_x, where, ctx.evaluation.features_layer,
                               ctx.evaluation.batch_size).cpu()
        names = data.classes
        metadata = [[names[int(labels[i])], names[int(columns["predicted"][i])] if columns["predicted"][i] >= 0 else "-",
                     REGIONS[int(columns["region"][i])], "yes" if columns["flagged"][i] else "no",
                     f"{columns['confidence'][i]:.3f}", f"{columns['variability'][i]:.3f}",
                     str(int(columns["forgetting"][i])), f"{columns['aum'][i]:.3f}", str(int(index[i]))]
                    for i in chosen]
        header = ["label", "predicted", "region", "label_issue", "confidence", "variability", "forgetting", "aum",
                  "index"]
        thumbnails = data.denormalize(data.normalize(data.train_x.index_select(0, where))).cpu()
        ctx.sink.embedding(f"{ctx.tag.replace('/', '-')}examples", features, metadata, header, thumbnails, ctx.step)
        problem = getattr(ctx.sink, "projector_problem", None)
        if problem and not self.projector_noticed:
            self.projector_noticed = True
            ctx.notice(f"dataset_map: {problem}")


def _ranked(score: np.ndarray) -> np.ndarray:
    """Positions by score, highest first (a stable order: ties by position); NaN (never seen) last."""
    return np.lexsort((np.arange(len(score)), -np.nan_to_num(score, nan=-np.inf)))


def _pixels(ctx: StageContext, positions: np.ndarray) -> np.ndarray:
    import torch

    data = ctx.data
    x = data.train_x.index_select(0, torch.as_tensor(positions, device=data.device))
    return data.denormalize(data.normalize(x)).cpu().numpy().astype(np.float32)


@register_view
def draw_data_map(confidence: np.ndarray, variability: np.ndarray, correctness: np.ndarray, aum: np.ndarray,
                  flagged: np.ndarray, epoch: int, epochs: int, tracked: int, size: int) -> Any:
    """Left: the data map (Swayamdipta et al. 2020) — each training example at its variability (x) and
    confidence (y) in the given label over the epochs, coloured by how often it was predicted right, the
    regions marked. Right: the area under the margin, stacked: the flagged label issues (AUM < 0 and wrong
    at the last epoch) in red."""
    from matplotlib.patches import Rectangle

    from ..plotting import figure

    confidence, variability = np.asarray(confidence), np.asarray(variability)
    correctness, aum = np.asarray(correctness), np.asarray(aum)
    shown = np.arange(len(confidence))
    if len(shown) > MAP_POINTS:
        shown = np.sort(np.random.default_rng(0).choice(len(shown), MAP_POINTS, replace=False))
    fig, axes = figure(1, 2, panel=4.4)
    ax, hist = axes[0]
    order = shown[np.argsort(-correctness[shown], kind="stable")]  # the rarely-right ones drawn on top
    points = ax.scatter(variability[order], confidence[order], c=correctness[order], cmap="RdYlBu", vmin=0, vmax=1,
                        s=5 if len(order) > 5000 else 9, linewidths=0, alpha=0.8)
    bar = fig.colorbar(points, ax=ax, shrink=0.8)
    bar.set_label("correctness (share of epochs right)")
    ax.add_patch(Rectangle((AMBIGUOUS_VARIABILITY, 0), 0.5 - AMBIGUOUS_VARIABILITY, 1, color="0.5", alpha=0.08,
                           linewidth=0))
    ax.axvline(AMBIGUOUS_VARIABILITY, color="0.4", linewidth=0.8, linestyle="--")
    ax.plot([0, AMBIGUOUS_VARIABILITY], [HARD_CONFIDENCE] * 2, color="0.4", linewidth=0.8, linestyle="--")
    region = np.where(variability >= AMBIGUOUS_VARIABILITY, 1, np.where(confidence < HARD_CONFIDENCE, 2, 0))
    for r, (x, y, ha, va) in enumerate(((0.01, 0.99, "left", "top"), (0.49, 0.5, "right", "center"),
                                        (0.01, 0.01, "left", "bottom"))):
        count = int((region == r).sum())
        name = "ambiguous" if r == 1 else f"{REGIONS[r]}-to-learn"
        ax.text(x, y, f"{name}\n{count:,} ({count / max(len(region), 1):.1%})", ha=ha, va=va, fontsize=8,
                color="0.1", bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0, "pad": 1.5})
    ax.set_xlim(0, 0.5)
    ax.set_ylim(0, 1)
    ax.set_xlabel("variability (std of p(given label) over epochs)")
    ax.set_ylabel("confidence (mean p(given label))")
    subset = "" if len(shown) == len(confidence) else f", {len(shown):,} drawn"
    ax.set_title(f"data map{subset}", fontsize=9)
    finite = np.isfinite(aum)
    flagged = np.asarray(flagged, dtype=bool) & finite
    if finite.any():
        values = aum[finite]
        bins = np.linspace(min(float(values.min()), -1.0), max(float(values.max()), 1.0), 61)
        hist.hist([aum[finite & ~flagged], aum[flagged]], bins=bins, stacked=True, color=["C0", "C3"], histtype="stepfilled",
                  label=["the others", f"label issues: AUM < 0, wrong at the end ({int(flagged.sum()):,})"])
    hist.axvline(0, color="0.2", linewidth=0.8)
    hist.set_yscale("log")
    hist.set_xlabel("AUM: mean over epochs of (given logit − largest other)")
    hist.set_ylabel("training examples")
    low, high = hist.get_ylim()
    hist.set_ylim(low, high * 10)  # room above the bars for the legend (log scale)
    hist.legend(fontsize=7, loc="upper left", frameon=False)
    hist.set_title("area under the margin", fontsize=9)
    followed = f"{tracked:,} training examples" if tracked == size else f"a fixed random {tracked:,} of {size:,} examples"
    fig.suptitle(f"epoch {epoch}: {followed} over {epochs} training epoch{'s' * (epochs != 1)}")
    return fig


@register_view
def draw_label_issues(pixels: np.ndarray, index: np.ndarray, labels: np.ndarray, predicted: np.ndarray,
                      score: np.ndarray, classes: list[str], epoch: int, flagged: int, tracked: int) -> bytes:
    """The training examples whose given label the training disagreed with most (highest −AUM first): the
    image, its index in the training set, the given label and the model's, and the score."""
    from ..plotting import TileSheet, grey_rgb

    pixels = np.asarray(pixels)
    n = len(pixels)
    cols = min(8, n)
    rows = -(-n // cols)
    sheet = TileSheet(rows, cols, tuple(pixels.shape[-2:]))
    for i in range(n):
        model = classes[int(predicted[i])] if int(predicted[i]) >= 0 else "-"
        given = classes[int(labels[i])]
        sheet.put(i // cols, i % cols, grey_rgb(pixels[i]),
                  f"#{int(index[i])} given {given[:10]}\nmodel {model[:10]} · {float(score[i]):.2f}")
    return sheet.png(f"epoch {epoch}: the {n} likeliest label issues of {tracked:,} training examples "
                     f"({flagged:,} flagged: AUM < 0 and wrong at the last epoch); score = −AUM, highest first")
