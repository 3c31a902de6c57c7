"""The evaluation images the model gets most wrong: the highest losses, each with one attribution map for
its predicted class, and the most-confused (true → predicted) class pairs with their most confident
mistakes. Everything comes from the epoch's evaluation pass (no extra forward pass over the set); only
the maps cost a little (``k`` images, in batches)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..analysis.records import register_view
from .base import Stage, Summary, register_stage

if TYPE_CHECKING:
    from torch import Tensor, nn

    from ..data import Data
    from .base import StageContext

__all__ = ["TopLossesStage", "confused_pairs", "draw_confused_pairs", "draw_top_losses", "pair_examples"]


class TopLossesOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(16, ge=1, le=256)  # images with the highest loss
    method: str = Field("integrated_gradients", min_length=1)  # an interp.attribution method (interp methods)
    steps: int = Field(20, ge=2, le=2000)  # integration points / samples, where the method takes them (a picture: 20)
    pairs: int = Field(6, ge=1, le=100)  # most-confused (true → predicted) pairs
    examples: int = Field(4, ge=1, le=16)  # a pair's most confident mistakes shown


@register_stage
class TopLossesStage(Stage):
    name = "top_losses"
    description = ("the evaluation images with the highest loss, each with an attribution map for its predicted "
                   "class, and the most-confused class pairs with their most confident mistakes")
    Options = TopLossesOptions

    def prepare(self, model: nn.Module, data: Data) -> None:
        from ..attribution import method_class
        from ..errors import UserError

        try:
            method = method_class(self.options.method)()
        except ValueError as exc:
            raise UserError(f"analysis.stages: top_losses: method: {exc}") from None
        reason = method.skip_reason(model)  # no example: nothing runs the model before training
        if reason:
            raise UserError(f"analysis.stages: top_losses: method {method.name}: {reason}")

    def run(self, ctx: StageContext) -> Summary:
        import torch

        evaluation, data = ctx.evaluation, ctx.data
        classes = list(data.classes)
        probs = evaluation.probs()
        predicted = probs.argmax(dim=1)
        labels = data.eval_y
        losses, index = evaluation.top_losses(self.options.k)
        top_pred = predicted[index]
        p_pred = probs[index, top_pred]
        p_given = probs[index, labels[index]]

        ctx.status("attribution maps")
        x = data.normalize(data.eval_x[index])
        maps = self.maps(ctx.model, x, top_pred, data)  # (K, H, W)

        numpy = {name: value.detach().cpu().numpy() for name, value in
                 {"index": index, "label": labels[index], "predicted": top_pred, "p_pred": p_pred.float(),
                  "p_given": p_given.float(), "loss": losses.float(), "pixels": pixels_of(data, index)}.items()}
        numpy["maps"] = maps.detach().float().cpu().numpy()
        ctx.keep("top_losses", {"index": numpy["index"], "label": numpy["label"], "predicted": numpy["predicted"],
                                "score": numpy["loss"], "p_pred": numpy["p_pred"], "p_given": numpy["p_given"]})
        ctx.keep("classes", list(classes))
        ctx.record("mean_top_loss", float(numpy["loss"].mean()) if len(numpy["loss"]) else 0.0)
        ctx.draw("top_losses", draw_top_losses, numpy["pixels"], numpy["maps"], numpy["index"], numpy["label"],
                 numpy["predicted"], numpy["p_pred"], numpy["p_given"], numpy["loss"], classes,
                 self.options.method, ctx.epoch)

        y_true, y_pred = labels.cpu().numpy(), predicted.cpu().numpy()
        true, pred, count = confused_pairs(y_true, y_pred, len(classes), self.options.pairs)
        confidence = probs.max(dim=1).values.float().cpu().numpy()  # of the predicted class: a mistake's p(pred)
        chosen = pair_examples(y_true, y_pred, confidence, true, pred, self.options.examples)  # (P, E), −1: none
        flat = torch.as_tensor(chosen[chosen >= 0], dtype=torch.long, device=data.eval_x.device)
        example_pixels = np.zeros((*chosen.shape, *data.input_shape), dtype=np.uint8)
        example_pixels[chosen >= 0] = pixels_of(data, flat).cpu().numpy()
        example_p = np.where(chosen >= 0, confidence[np.maximum(chosen, 0)], 0.0).astype(np.float32)
        support = np.bincount(y_true, minlength=len(classes))
        ctx.keep("confused_pairs", {"true": true, "predicted": pred, "count": count, "examples": chosen})
        errors = int((y_true != y_pred).sum())
        if len(count):
            ctx.draw("confused_pairs", draw_confused_pairs, true, pred, count, chosen, example_p, example_pixels,
                     classes, errors, len(y_true), ctx.epoch)

        rows = [[classes[t], classes[p], int(c), round(float(c) / max(int(support[t]), 1), 4)]
                for t, p, c in zip(true, pred, count, strict=True)]
        wrong = int((numpy["label"] != numpy["predicted"]).sum())
        notes = [f"{errors} errors in {len(y_true)} items" + ("" if len(count) else ": no confused pairs"),
                 f"the {len(numpy['loss'])} highest losses: mean {ctx.numbers['top_losses/mean_top_loss']:.3f}, "
                 f"{wrong} of them misclassified"]
        return Summary("Most-confused pairs", ["true", "predicted", "errors", "share of true class"], rows, notes,
                       terminal=False)

    def maps(self, model: nn.Module, x: Tensor, target: Tensor, data: Data) -> Tensor:
        """The method's map of each image (K, H, W), unsigned (its largest |value| over channels), for
        ``target``; the options it takes of the black image, the white one and ``steps``."""
        import torch

        from ..attribution import attribute, batch_size, method_class, to_map, white
        from ..imports import accepted_keywords

        method = method_class(self.options.method)()
        parts = []
        torch.manual_seed(0)  # SmoothGrad's and expected gradients' noise (the runner restores the RNG)
        for start in range(0, len(x), batch_size(x)):
            chunk = x[start:start + batch_size(x)]
            black = data.black(chunk)
            offered = {"baseline": black, "white": white(black, data), "steps": self.options.steps}
            values = attribute(method, model, chunk, target[start:start + len(chunk)],
                               **accepted_keywords(method.attribute, offered))
            parts.append(to_map(values, signed=False))
        if not parts:
            return torch.zeros(0, *x.shape[-2:], device=x.device)
        return torch.cat(parts)


def confused_pairs(y_true: np.ndarray, y_pred: np.ndarray, classes: int, top: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``top`` off-diagonal cells of the confusion matrix with the most errors, as (true, predicted,
    count) arrays: most errors first, then by true class, then predicted class; cells without errors left out."""
    from .confusion import confusion

    matrix = confusion(y_true, y_pred, classes)
    np.fill_diagonal(matrix, 0)
    true, pred = np.nonzero(matrix)
    counts = matrix[true, pred]
    order = np.lexsort((pred, true, -counts))[:top]
    return true[order].astype(np.int64), pred[order].astype(np.int64), counts[order].astype(np.int64)


def pair_examples(y_true: np.ndarray, y_pred: np.ndarray, confidence: np.ndarray, true: np.ndarray,
                  pred: np.ndarray, examples: int) -> np.ndarray:
    """For each pair, the positions of its mistakes (label ``true``, prediction ``pred``) with the highest
    ``confidence`` (each item's probability of its predicted class), at most ``examples`` (P, examples),
    padded with −1; equal probabilities in evaluation order."""
    chosen = np.full((len(true), examples), -1, dtype=np.int64)
    for row, (t, p) in enumerate(zip(true, pred, strict=True)):
        where = np.nonzero((y_true == t) & (y_pred == p))[0]
        best = where[np.argsort(-confidence[where], kind="stable")][:examples]
        chosen[row, :len(best)] = best
    return chosen


def pixels_of(data: Data, index: Tensor, images: Tensor | None = None) -> Tensor:
    """Evaluation images ``index`` (of ``images``: the training images, say) as drawn, (B, C, H, W) uint8: their
    pixels in [0, 1] (as the probe's) × 255, rounded — a quarter of float32's room in the record."""
    import torch

    pixels = data.denormalize(data.normalize((data.eval_x if images is None else images)[index]))
    return (pixels.float().clamp(0, 1) * 255).round().to(torch.uint8)


def _rgb(pixels: np.ndarray) -> np.ndarray:
    """(C, H, W) uint8 pixels as (H, W, 3) uint8 (grey repeated), unchanged."""
    image = np.moveaxis(np.asarray(pixels, dtype=np.uint8), 0, -1)
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def _short(name: str, width: int = 10) -> str:
    return name if len(name) <= width else name[:width - 1] + "…"


def _layout(items: list[list[str]], width: float, font: Any) -> list[str]:
    """Each item's parts as lines, laid out alike for every item (the panels of a sheet read the same): the
    first of these groupings whose lines all fit in ``width`` pixels — all parts on one line, all but the last
    on one, each on its own — joined by " · "."""
    count = len(items[0]) if items else 0
    groupings = [[list(range(count))], [list(range(count - 1)), [count - 1]], [[i] for i in range(count)]]
    for grouping in groupings:
        texts = ["\n".join(" · ".join(parts[i] for i in group) for group in grouping if group) for parts in items]
        if all(font.getlength(line) <= width for text in texts for line in text.split("\n")):
            return texts
    return texts


@register_view
def draw_top_losses(pixels: np.ndarray, maps: np.ndarray, index: np.ndarray, label: np.ndarray,
                    predicted: np.ndarray, p_pred: np.ndarray, p_given: np.ndarray, loss: np.ndarray,
                    classes: list[str], method: str, epoch: int) -> bytes:
    """Per image, highest loss first: the image (given class, predicted class and its probability, the loss),
    the method's map for the predicted class (|map| on its own maximum), and the map over the image."""
    from ..plotting import _font, overlay_rgb, per_image_sheet, unsigned_rgb

    n = len(pixels)
    if n == 0:
        raise ValueError("no images to draw")
    maps = np.abs(np.asarray(maps, dtype=np.float32))
    sheet = per_image_sheet(n, 3, tuple(maps.shape[1:]))
    font = _font(12)
    width = sheet.tw + sheet.GAP
    heads = _layout([[f"given {_short(classes[int(label[i])])}",
                      f"pred {_short(classes[int(predicted[i])])} ({float(p_pred[i]):.2f})",
                      f"loss {float(loss[i]):.3g}"] for i in range(n)], width, font)
    sides = _layout([[f"#{int(index[i])}", f"p(given) {float(p_given[i]):.2f}"] for i in range(n)], width, font)
    for i, place in enumerate(sheet.places):
        place(_rgb(pixels[i]), heads[i])
        place(unsigned_rgb(maps[i]), sides[i])
        place(overlay_rgb(np.asarray(pixels[i], dtype=np.float32) / 255, maps[i]))
    name = method.replace("integrated_gradients", "integrated gradients").replace("_", " ")
    wrong = int((np.asarray(label) != np.asarray(predicted)).sum())
    return sheet.png(f"top losses, epoch {epoch}: the {n} highest-loss evaluation images ({wrong} misclassified), "
                     f"highest first; beside each, |{name}| for the predicted class (own maximum; #: the image's "
                     "position in the evaluation set) and that map over the image")


@register_view
def draw_confused_pairs(true: np.ndarray, predicted: np.ndarray, count: np.ndarray, examples: np.ndarray,
                        probability: np.ndarray, pixels: np.ndarray, classes: list[str], errors: int, items: int,
                        epoch: int) -> bytes:
    """One row per (true → predicted) pair, most errors first: its count, then its most confident mistakes,
    each with the probability of the wrong class."""
    from ..plotting import TileSheet, _font

    examples, pixels = np.asarray(examples), np.asarray(pixels)
    rows, cols = examples.shape
    sheet = TileSheet(rows, cols, tuple(pixels.shape[-2:]))
    font = _font(12)
    width = sheet.tw + sheet.GAP
    names = [(_short(classes[int(t)]), _short(classes[int(p)])) for t, p in zip(true, predicted, strict=True)]
    heads = _layout([[f"{t} → {p}", f"{int(c)} error{'s' if c != 1 else ''}"]
                     for (t, p), c in zip(names, count, strict=True)], width, font)
    for r, (_, p) in enumerate(names):
        for c in range(cols):
            if examples[r, c] < 0:  # fewer mistakes than places: left white
                continue
            title = f"p({p}) {float(probability[r, c]):.2f}"
            sheet.put(r, c, _rgb(pixels[r, c]), f"{heads[r]}\n{title}" if c == 0 else title)
    return sheet.png(f"most-confused pairs, epoch {epoch}: true → predicted, most errors first ({errors} errors in "
                     f"{items} items); each row's most confident mistakes")
