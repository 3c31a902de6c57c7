"""Confusion matrix (rows = true class, columns = predicted class) with per-class precision/recall/F1."""

from __future__ import annotations

import csv
import io
from typing import TYPE_CHECKING, Any

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


@register_view
def draw_confusion(matrix: np.ndarray, normalized: np.ndarray, classes: list[str], accuracy: float, epoch: int,
                   noun: str) -> Any:
    """The counts and the row-normalized matrix side by side; empty cells
    are blank, and the colour scales are fixed (counts: 0 to the largest class; rates: 0 to 1)."""
    from ..plotting import figure

    n = len(classes)
    labels = list(range(n))
    panel = max(3.6, 0.42 * n)
    fig, axes = figure(1, 2, panel=panel)
    # fixed colour limits, so that TensorBoard's step slider compares like with like: counts up to the
    # largest class (the same every epoch), rates from 0 to 1
    support = int(matrix.sum(axis=1).max()) or 1
    for ax, values, title, top in ((axes[0, 0], matrix, "counts", support),
                                   (axes[0, 1], normalized, "row-normalized\n(recall on the diagonal)", 1.0)):
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=top)
        ax.set_title(title)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_xticks(labels, classes, rotation=90 if max(map(len, classes)) > 2 else 0)
        ax.set_yticks(labels, classes)
        if n <= 20:  # the number in every cell, none where the count is 0
            for (r, c), v in np.ndenumerate(values):
                if matrix[r, c]:
                    # inside its cell: left out of the layout and bbox computations, which it would slow down
                    ax.text(c, r, format(v, "d" if values is matrix else ".2f"), ha="center", va="center",
                            fontsize=7 if n > 10 else 8, in_layout=False, color="white" if v > 0.6 * top else "black")
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(f"epoch {epoch}: accuracy {accuracy:.3f} on {int(matrix.sum())} {noun}")
    return fig
