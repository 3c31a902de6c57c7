"""Confusion matrix (rows = true class, columns = predicted class) with per-class precision/recall/F1."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING

import numpy as np

from ..analysis.records import register_view
from .base import Stage, Summary, register_stage

if TYPE_CHECKING:
    from .base import StageContext


@register_stage
class Confusion(Stage):
    name = "confusion"
    needs = frozenset({"classes"})  # the matrix needs classes, not pictures
    description = "confusion matrix on the evaluation set (raw and row-normalized) + per-class precision/recall/F1"

    def run(self, ctx: StageContext) -> Summary:
        classes = ctx.data.classes
        y_true = ctx.data.eval_y.cpu().numpy()
        y_pred = ctx.eval_logits().argmax(dim=1).cpu().numpy()
        matrix = confusion(y_true, y_pred, len(classes))  # (true, predicted)
        support = matrix.sum(axis=1, keepdims=True)
        normalized = np.divide(matrix, support, out=np.zeros(matrix.shape), where=support > 0)
        precision, recall, f1, counts = per_class_scores(matrix)
        accuracy = float(np.trace(matrix) / max(matrix.sum(), 1))

        rows = [{"class": c, "precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                for c, p, r, f, s in zip(classes, precision, recall, f1, counts, strict=True)]
        table = io.StringIO(newline="")
        writer = csv.DictWriter(table, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        ctx.save_file("per_class.csv", table.getvalue())
        ctx.save_json("confusion.json", {
            "epoch": ctx.epoch, "classes": classes, "rows": "true class", "columns": "predicted class",
            "matrix": matrix.tolist(), "row_normalized": normalized.round(6).tolist(),
            "accuracy": accuracy, "per_class": rows,
        })
        ctx.record("accuracy", accuracy)
        ctx.record("macro_f1", float(np.mean(f1)))

        noun = "images" if ctx.data.is_image else "points"
        ctx.draw("confusion", draw_confusion, matrix, normalized, list(classes), accuracy, ctx.epoch, noun)
        return Summary("Per class", ["class", "precision", "recall", "F1", "support"],
                       [list(row.values()) for row in rows], [f"accuracy {accuracy:.2%}"], terminal=False)


def confusion(y_true: np.ndarray, y_pred: np.ndarray, classes: int) -> np.ndarray:
    """Counts (classes, classes): row = true class, column = predicted class (scikit-learn's
    ``confusion_matrix`` with ``labels=range(classes)``, without importing it on the training path)."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    inside = (y_true >= 0) & (y_true < classes) & (y_pred >= 0) & (y_pred < classes)
    cells = np.bincount(y_true[inside] * classes + y_pred[inside], minlength=classes * classes)
    return cells.reshape(classes, classes)


def per_class_scores(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix; a ratio with nothing to divide
    by is 0 (scikit-learn's ``precision_recall_fscore_support(..., zero_division=0)``)."""
    true_positive = np.diag(matrix).astype(np.float64)
    predicted, support = matrix.sum(axis=0), matrix.sum(axis=1)

    def ratio(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
        return np.divide(top, bottom, out=np.zeros(len(top)), where=bottom > 0)

    f1 = ratio(2 * true_positive, (predicted + support).astype(np.float64))  # 2·tp / (2·tp + fp + fn)
    return ratio(true_positive, predicted), ratio(true_positive, support), f1, support


def confusion_panels(matrix: np.ndarray, normalized: np.ndarray) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """What each panel of :func:`draw_confusion` shows: its values, the top of its colour scale (counts:
    the largest class; rates: 1), and the text of every cell ("" where the count is 0, and everywhere
    past 20 classes)."""
    n = len(matrix)
    panels = []
    for values, high, fmt in ((matrix, float(int(matrix.sum(axis=1).max()) or 1), "d"), (normalized, 1.0, ".2f")):
        texts = np.full(matrix.shape, "", dtype=object)
        if n <= 20:
            for (r, c), v in np.ndenumerate(values):
                if matrix[r, c]:
                    texts[r, c] = format(int(v) if fmt == "d" else float(v), fmt)
        panels.append((values, high, texts))
    return panels


@register_view
def draw_confusion(matrix: np.ndarray, normalized: np.ndarray, classes: list[str], accuracy: float, epoch: int,
                   noun: str) -> bytes:
    """The counts and the row-normalized matrix side by side, as one Pillow sheet: rows the true class,
    columns the predicted one, the number in every cell (none where the count is 0, none at all past 20
    classes), on fixed colour scales (counts: 0 to the largest class, the same every epoch; rates: 0 to 1)."""
    from PIL import Image, ImageDraw

    from ..plotting import _font, to_rgb

    matrix, normalized = np.asarray(matrix), np.asarray(normalized)
    n = len(classes)
    cell = max(6, min(48, 480 // n))
    side = cell * n
    names = [name if len(name) <= 10 else name[:9] + "…" for name in classes]
    small, large = _font(12), _font(15)
    margin = 16 + max(int(small.getlength(name)) for name in names)  # class names left of the rows
    below = 20 + (margin if n > 20 or max(map(len, names)) > 2 else 14)  # under the columns (upright if long)
    top, gap = 100, 40
    width = 2 * (margin + side) + gap + 20
    canvas = Image.new("RGB", (width, top + side + below), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((width / 2, 8), f"epoch {epoch}: accuracy {accuracy:.3f} on {int(matrix.sum())} {noun}", fill="black",
              font=large, anchor="ma")
    for k, (label, (values, high, texts)) in enumerate(zip(("counts", "row-normalized (recall on the diagonal)"),
                                                           confusion_panels(matrix, normalized), strict=True)):
        left = 10 + k * (margin + side + gap) + margin
        ramp = np.linspace(0, high, side)[None, :].repeat(9, axis=0)  # the colour bar, 0 to the top
        canvas.paste(Image.fromarray(to_rgb(ramp, "Blues", 0, high)), (left, 50))
        draw.text((left, 46), label, fill="black", font=small, anchor="ld")
        draw.text((left, 62), "0", fill="black", font=small, anchor="lt")
        draw.text((left + side, 62), f"{high:g}", fill="black", font=small, anchor="rt")  # the scale's top
        rgb = to_rgb(values.astype(np.float64), "Blues", 0, high)
        canvas.paste(Image.fromarray(np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)), (left, top))
        draw.rectangle((left - 1, top - 1, left + side, top + side), outline=(160, 160, 160))
        for r, name in enumerate(names):
            draw.text((left - 6, top + r * cell + cell / 2), name, fill="black", font=small, anchor="rm")
        for c, name in enumerate(names):
            x = left + c * cell + cell / 2
            if below > 34:  # long names or many classes: written upwards
                text = Image.new("L", (int(small.getlength(name)) + 2, 16), 255)
                ImageDraw.Draw(text).text((0, 0), name, fill=0, font=small)
                upright = text.rotate(90, expand=True)
                canvas.paste((0, 0, 0), (int(x - 8), top + side + 4), Image.eval(upright, lambda v: 255 - v))
            else:
                draw.text((x, top + side + 4), name, fill="black", font=small, anchor="ma")
        draw.text((left - margin, top - 8), "true ↓  predicted →", fill=(90, 90, 90), font=small, anchor="ld")
        font = _font(11 if cell < 40 else 12)
        for (r, c), text in np.ndenumerate(texts):
            if text:
                draw.text((left + c * cell + cell / 2, top + r * cell + cell / 2), text, font=font, anchor="mm",
                          fill="white" if values[r, c] > 0.6 * high else "black")
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
