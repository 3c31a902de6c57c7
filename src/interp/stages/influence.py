"""Influence: for the probe images and the highest-loss evaluation images, the training images whose training
steps lowered the image's loss on its given label (proponents) and raised it (opponents), and every training
example's self-influence — TracIn over the run's per-epoch checkpoints (:mod:`interp.analysis.influence`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..analysis.records import register_view
from .base import Stage, Summary, register_stage

if TYPE_CHECKING:
    from ..data import Data
    from .base import StageContext

__all__ = ["InfluenceStage", "draw_influence", "draw_self_influence", "train_pixels"]


class InfluenceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    every: int | None = Field(None, ge=1, le=100_000)  # also every N-th epoch (None: the final analysis only)
    queries: int = Field(8, ge=0, le=256)  # highest-loss evaluation images, beside the probe images
    top: int = Field(6, ge=1, le=64)  # proponents and opponents shown per image
    score: Literal["cosine", "raw"] = "cosine"  # what ranks them (both are kept)
    variant: Literal["fast", "full"] = "fast"  # the classifier's gradients, or every parameter's (snapshots)
    self_influence: int = Field(24, ge=0, le=256)  # training images with the highest self-influence shown
    batch_size: int = Field(1000, ge=1, le=100_000)


@register_stage
class InfluenceStage(Stage):
    name = "influence"
    description = ("TracIn over the run's per-epoch checkpoints: the training images that most helped and most "
                   "hurt the probe and highest-loss evaluation images, and every training image's self-influence")
    Options = InfluenceOptions
    needs = frozenset({"classes"})  # the galleries only where the inputs are images

    def run(self, ctx: StageContext) -> Summary | None:
        import torch

        from ..analysis.influence import read_checkpoints, tracin

        every = self.options.every
        if ctx.epoch == 0 or (not ctx.final and not (every and ctx.epoch % every == 0)):
            return None
        checkpoints = read_checkpoints(ctx.run_folder, ctx.epoch) if ctx.run_folder is not None else []
        if not checkpoints:
            ctx.notice("influence: skipped (no per-epoch classifier weights in the run's training/ records: "
                       "`interp train` keeps them, the Analyzer inside watch() with train_data, the Lightning "
                       "callback with its training set; a model without a Linear or 1×1 conv classifier has none)")
            return None
        data, evaluation = ctx.data, ctx.evaluation
        probes = ctx.probe.indices.to(data.eval_x.device)
        top_index = evaluation.top_losses(self.options.queries)[1] if self.options.queries else probes[:0]
        queries = torch.cat([probes, top_index])
        total = len(data.train_x) * len(checkpoints)
        ctx.status(f"{len(queries)} images × {len(data.train_x):,} training examples × {len(checkpoints)} epochs")
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            ctx.status(f"{done:,} of {total:,} (training examples × epochs)")

        found = tracin(ctx.model, data, queries, checkpoints, variant=self.options.variant,
                       batch_size=self.options.batch_size, advance=advance, notice=ctx.notice)
        scores = found.scores(self.options.score)
        top = min(self.options.top, scores.shape[1])
        order = np.argsort(-scores, axis=1, kind="stable")
        proponents, opponents = order[:, :top], order[:, ::-1][:, :top]
        taken = np.take_along_axis
        proponent_scores, opponent_scores = taken(scores, proponents, 1), taken(scores, opponents, 1)
        predicted = evaluation.predictions()[queries].cpu().numpy()
        labels = data.eval_y[queries].cpu().numpy()
        train_y = data.train_y.cpu().numpy()
        classes = list(data.classes)
        ctx.keep("queries", {"index": queries.cpu().numpy(), "probe": np.arange(len(queries)) < len(probes),
                             "label": labels, "predicted": predicted,
                             "proponents": proponents, "proponent_scores": proponent_scores,
                             "opponents": opponents, "opponent_scores": opponent_scores,
                             "proponent_cosine": taken(found.cosine, proponents, 1),
                             "opponent_cosine": taken(found.cosine, opponents, 1),
                             "proponent_raw": taken(found.raw, proponents, 1),
                             "opponent_raw": taken(found.raw, opponents, 1)})
        ctx.keep("self_influence", found.self_influence.astype(np.float32))
        ctx.keep("about", {"score": self.options.score, "variant": found.variant, "features": found.features,
                           "epochs": found.epochs, "classes": classes})
        from .top_losses import pixels_of

        query_pixels = pixels_of(data, queries).cpu().numpy() if data.is_image else None
        groups = (("probes", slice(0, len(probes)), "the probe images"),
                  ("top_losses", slice(len(probes), len(queries)), "the highest-loss evaluation images"))
        for name, part, what in groups:
            if part.stop - part.start == 0 or query_pixels is None:
                continue
            ctx.draw(name, draw_influence, query_pixels[part], queries[part].cpu().numpy(), labels[part],
                     predicted[part], train_pixels(data, proponents[part]), proponents[part],
                     proponent_scores[part], train_pixels(data, opponents[part]), opponents[part],
                     opponent_scores[part], train_y, classes, self.options.score, what, ctx.epoch)
        if self.options.self_influence and data.is_image:
            ranked = np.argsort(-found.self_influence, kind="stable")[: self.options.self_influence]
            with torch.no_grad():
                x = data.normalize(data.train_x[torch.as_tensor(ranked, device=data.train_x.device)])
                train_predicted = ctx.model(x).argmax(dim=1).cpu().numpy()
            ctx.draw("self_influence", draw_self_influence, train_pixels(data, ranked[None])[0], ranked,
                     train_y[ranked], train_predicted, found.self_influence[ranked], found.self_influence, classes,
                     ctx.epoch)
        rows = []
        for i in range(len(probes), len(queries)):
            best, worst = proponents[i, 0], opponents[i, 0]
            rows.append([int(queries[i]), classes[labels[i]], classes[predicted[i]],
                         f"#{best} {classes[train_y[best]]} ({scores[i, best]:+.2f})",
                         f"#{worst} {classes[train_y[worst]]} ({scores[i, worst]:+.2f})"])
        notes = [f"{self.options.score} of the loss gradients ({found.variant} variant: "
                 f"{'the classifier' if found.variant == 'fast' else 'every parameter'}; features from "
                 f"{found.features}), over epochs {found.epochs[0]}–{found.epochs[-1]}; {found.seconds:.1f} s"]
        return Summary("Influence: highest-loss evaluation images", ["eval #", "given", "predicted",
                                                                       "top proponent", "top opponent"],
                       rows, notes, terminal=False)


def train_pixels(data: Data, index: np.ndarray) -> np.ndarray:
    """Training images ``index`` (any shape) as drawn: (*index.shape, C, H, W) uint8."""
    import torch

    from .top_losses import pixels_of

    flat = torch.as_tensor(np.asarray(index).reshape(-1), dtype=torch.long, device=data.train_x.device)
    pixels = pixels_of(data, flat, data.train_x).cpu().numpy()
    return pixels.reshape(*np.asarray(index).shape, *pixels.shape[1:])


@register_view
def draw_influence(pixels: np.ndarray, index: np.ndarray, label: np.ndarray, predicted: np.ndarray,
                   proponent_pixels: np.ndarray, proponents: np.ndarray, proponent_scores: np.ndarray,
                   opponent_pixels: np.ndarray, opponents: np.ndarray, opponent_scores: np.ndarray,
                   train_labels: np.ndarray, classes: list[str], score: str, what: str, epoch: int) -> bytes:
    """A row per evaluation image: the image (given and predicted class), then its proponents (the training
    images whose gradients agree with its own most), then its opponents; each with its label and score."""
    from ..plotting import TileSheet
    from .top_losses import _rgb

    rows, top = np.asarray(proponents).shape
    sheet = TileSheet(max(rows, 1), 1 + 2 * top, tuple(np.asarray(pixels).shape[-2:]), group=1 + top)
    for r in range(rows):
        mark = "" if label[r] == predicted[r] else " ✗"
        sheet.put(r, 0, _rgb(pixels[r]), f"eval #{int(index[r])}\ngiven {classes[int(label[r])]}\n"
                                          f"pred {classes[int(predicted[r])]}{mark}")
        for j in range(top):
            for col, images, chosen, values, kind in ((1 + j, proponent_pixels, proponents, proponent_scores, "+"),
                                                      (1 + top + j, opponent_pixels, opponents, opponent_scores, "−")):
                t = int(chosen[r, j])
                head = ("proponents" if kind == "+" else "opponents") if j == 0 else ""
                sheet.put(r, col, _rgb(images[r, j]),
                          f"{head}\n#{t} · {classes[int(train_labels[t])]}\n{float(values[r, j]):+.2f}")
    name = "gradient cosine" if score == "cosine" else "TracIn score"
    return sheet.png(f"influence, epoch {epoch}: for {what}, the training images that helped most (proponents) "
                     f"and hurt most (opponents), with their labels and {name}")


@register_view
def draw_self_influence(pixels: np.ndarray, index: np.ndarray, label: np.ndarray, predicted: np.ndarray,
                        values: np.ndarray, every: np.ndarray, classes: list[str], epoch: int) -> bytes:
    """The training images with the highest self-influence, each with its given label and the model's
    prediction, beside a histogram of every training example's."""
    from matplotlib.figure import Figure

    from ..plotting import render

    n = len(index)
    cols = min(8, max(n, 1))
    rows = -(-n // cols)
    fig = Figure(figsize=(1.3 * cols + 4.0, 1.5 * max(rows, 2) + 0.8), layout="constrained")
    grid = fig.add_gridspec(max(rows, 1), cols + 3)
    for k in range(n):
        ax = fig.add_subplot(grid[k // cols, k % cols])
        image = np.moveaxis(np.asarray(pixels[k]), 0, -1)
        ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255)
        wrong = int(label[k]) != int(predicted[k])
        ax.set_title(f"#{int(index[k])}\ngiven {classes[int(label[k])]} · pred {classes[int(predicted[k])]}",
                     fontsize=7, color="#b2182b" if wrong else "black")
        ax.set_xticks([])
        ax.set_yticks([])
    hist = fig.add_subplot(grid[:, cols:])
    every = np.asarray(every, dtype=np.float64)
    positive = every[every > 0]
    if len(positive):
        bins = np.logspace(np.log10(positive.min()), np.log10(positive.max()), 40).tolist() \
            if positive.max() > positive.min() else 10
        hist.hist(positive, bins=bins, color="#4c72b0")
        hist.set_xscale("log")
        if n:
            hist.axvline(float(np.min(values)), color="#b2182b", linestyle="--", linewidth=1,
                         label=f"the {n} shown")
            hist.legend(fontsize=7)
    hist.set_yscale("log")
    hist.set_xlabel("self-influence (Σ η‖∇loss‖²)", fontsize=8)
    hist.set_ylabel("training examples", fontsize=8)
    hist.tick_params(labelsize=7)
    fig.suptitle(f"self-influence, epoch {epoch}: the training examples whose own loss gradient was largest over "
                 "training — likely mislabelled or atypical (red: the model disagrees with the given label)",
                 fontsize=9)
    return render(fig)
