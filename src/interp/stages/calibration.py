"""Calibration on the evaluation set: the expected calibration error (ECE) of the top-label confidence,
each class's ECE, and a reliability diagram.

The numbers are torchmetrics' (``MulticlassCalibrationError(n_bins=15, norm="l1")`` for the top label,
``BinaryCalibrationError`` of p_k against 1[y = k] for class k; torchmetrics itself is not needed),
computed as it computes them: on the CPU in float32, ``bins`` + 1 edges from ``torch.linspace(0, 1,
bins + 1)``, a confidence c in bin i when edge[i] ≤ c < edge[i + 1] (``torch.bucketize(right=True) - 1``),
and ECE = Σ_bins share × |accuracy − mean confidence|. A confidence of exactly 1.0 therefore has a bin of
its own past the last edge, as in torchmetrics; a saturated softmax in float32 gives many. (Summing a
bin in float32 rounds: with 10,000 items in a bin the ECE is some 1e-6 off the float64 sum; it is kept
so, to equal torchmetrics.)"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..analysis.records import register_view
from .base import Stage, Summary, register_stage

if TYPE_CHECKING:
    from .base import StageContext

__all__ = ["CalibrationStage", "bin_edges", "binned", "class_ece", "draw_reliability", "top_label_ece"]


class CalibrationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bins: int = Field(15, ge=1, le=1000)  # equal-width confidence bins over [0, 1]


@register_stage
class CalibrationStage(Stage):
    name = "calibration"
    needs = frozenset({"classes"})  # probabilities and labels, no pictures
    description = ("expected calibration error (ECE) of the top-label confidence on the evaluation set, each "
                   "class's ECE, and a reliability diagram")
    Options = CalibrationOptions

    def run(self, ctx: StageContext) -> Summary:
        bins = self.options.bins
        probs = ctx.evaluation.probs()
        labels = ctx.data.eval_y
        classes = list(ctx.data.classes)
        table = top_label_ece(probs, labels, bins)
        per_class = class_ece(probs, labels, bins)
        ece = float(table["ece"])
        count, confidence, accuracy = table["count"], table["confidence"], table["accuracy"]
        n = len(labels)
        mean_probability = probs.double().mean(dim=0).cpu().numpy() if n else np.zeros(len(classes))
        frequency = np.bincount(labels.cpu().numpy(), minlength=len(classes))[:len(classes)] / max(n, 1)

        ctx.record("ece", ece)
        ctx.record("mean_class_ece", float(per_class.mean()))
        ctx.record("max_class_ece", float(per_class.max()))
        bin_table = {"edges": table["edges"], "count": count, "confidence": confidence, "accuracy": accuracy}
        ctx.keep("bins", bin_table)
        ctx.keep("class_ece", per_class)
        ctx.draw("reliability", draw_reliability, table["edges"], count, confidence, accuracy, ece, per_class,
                 classes, ctx.epoch)  # its own axis per epoch: the values are written on the bars

        worst = int(per_class.argmax())
        overall = float(accuracy @ count / max(n, 1)), float(confidence @ count / max(n, 1))
        rows = [[name, round(float(e), 5), round(float(p), 4), round(float(f), 4)]
                for name, e, p, f in zip(classes, per_class, mean_probability, frequency, strict=True)]
        notes = [f"ECE {ece:.4f} over {n} items ({bins} bins of the top-label confidence); accuracy "
                 f"{overall[0]:.4f}, mean confidence {overall[1]:.4f}",
                 f"largest class ECE: {classes[worst]} ({per_class[worst]:.4f})"]
        return Summary("Calibration per class", ["class", "class ECE", "mean p(class)", "frequency"], rows, notes,
                       terminal=False)


def bin_edges(bins: int) -> np.ndarray:
    """The ``bins`` + 1 edges torchmetrics uses: ``torch.linspace(0, 1, bins + 1)`` in float32."""
    import torch

    return torch.linspace(0, 1, bins + 1, dtype=torch.float32).numpy()


def binned(confidence: Any, correct: Any, bins: int = 15) -> dict[str, np.ndarray]:
    """The bin table and the ECE of each row of ``confidence`` (R, N) against ``correct`` (R, N) (1-D: one
    row), computed as torchmetrics computes them, on the CPU in float32: a confidence c is in bin i when
    edge[i] ≤ c < edge[i + 1], of ``bins`` + 1 bins (the last: exactly 1.0); per bin its count, mean
    confidence and accuracy (0 where empty), and ECE = Σ share × |accuracy − mean confidence|. Returns
    numpy arrays: ``edges`` (bins + 1,), ``count``, ``confidence``, ``accuracy`` (R, bins + 1) and ``ece``
    (R,) — without the R axis for 1-D input."""
    import torch

    confidence = torch.as_tensor(confidence).detach().to("cpu", torch.float32)
    correct = torch.as_tensor(correct).detach().to("cpu", torch.float32)
    flat = confidence.dim() == 1
    confidence, correct = confidence.reshape(-1, confidence.shape[-1]), correct.reshape(-1, correct.shape[-1])
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float32)
    where = (torch.bucketize(confidence, edges, right=True) - 1).clamp_(0, bins)  # clamp: never, for probabilities

    def per_bin(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(values), bins + 1).scatter_add_(1, where, values)

    count = per_bin(torch.ones_like(confidence))
    mean_confidence = torch.nan_to_num(per_bin(confidence) / count)
    accuracy = torch.nan_to_num(per_bin(correct) / count)
    share = count / count.sum(dim=1, keepdim=True)
    ece = ((accuracy - mean_confidence).abs() * share).sum(dim=1)
    out = {"count": count, "confidence": mean_confidence, "accuracy": accuracy, "ece": ece}
    table = {k: (v[0] if flat else v).double().numpy() for k, v in out.items()}
    return {"edges": edges.numpy(), **table}


def top_label_ece(probs: Any, labels: Any, bins: int = 15) -> dict[str, np.ndarray]:
    """:func:`binned` for the top-label confidence (the largest probability) against whether its class is the
    label: torchmetrics' ``MulticlassCalibrationError(norm="l1")``."""
    import torch

    probs = torch.as_tensor(probs).detach().to("cpu", torch.float32)
    confidence, predicted = probs.max(dim=1)
    return binned(confidence, predicted == torch.as_tensor(labels).cpu(), bins)


def class_ece(probs: Any, labels: Any, bins: int = 15, chunk: int = 64) -> np.ndarray:
    """Each class k's ECE (C,): :func:`binned` of p_k against 1[label = k] over every item, torchmetrics'
    ``BinaryCalibrationError(norm="l1")``; ``chunk`` classes at a time."""
    import torch

    probs = torch.as_tensor(probs).detach().to("cpu", torch.float32)
    labels = torch.as_tensor(labels).cpu()
    parts = []
    for first in range(0, probs.shape[1], chunk):
        ks = torch.arange(first, min(first + chunk, probs.shape[1]))
        parts.append(binned(probs[:, ks].T.contiguous(), labels[None, :] == ks[:, None], bins)["ece"].reshape(-1))
    return np.concatenate(parts) if parts else np.zeros(0)


def _short(name: str, width: int = 12) -> str:
    return name if len(name) <= width else name[:width - 1] + "…"


@register_view
def draw_reliability(edges: np.ndarray, count: np.ndarray, confidence: np.ndarray, accuracy: np.ndarray, ece: float,
                     class_ece: np.ndarray, classes: list[str], epoch: int, scale: dict[str, float] | None = None,
                     scale_note: str = "this epoch's scale") -> Any:
    """Left: the reliability diagram — accuracy per confidence bin as bars, the gap to the bin's mean
    confidence shaded, the diagonal of perfect calibration — above the share of items per bin. A bin of
    confidences of exactly 1.0 (torchmetrics' extra bin) is drawn as a narrow bar right of 1. Right: each
    class's ECE, on ``scale["class_ece"]`` (the largest over the run when drawn again at its end)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    edges, count = np.asarray(edges, dtype=np.float64), np.asarray(count, dtype=np.float64)
    confidence, accuracy = np.asarray(confidence, dtype=np.float64), np.asarray(accuracy, dtype=np.float64)
    class_ece = np.asarray(class_ece, dtype=np.float64)
    bins = len(edges) - 1
    width = 1.0 / bins
    lefts = np.append(edges[:-1], 1.0 + 0.25 * width)  # the bin of 1.0 exactly: right of the axis' end
    widths = np.append(np.diff(edges), 0.5 * width)
    used = count > 0
    total = max(count.sum(), 1.0)
    saturated = bool(count[-1] > 0)

    fig = Figure(figsize=(10.0, 4.9), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 2, height_ratios=(3.2, 1), width_ratios=(1.45, 1))
    ax = fig.add_subplot(grid[0, 0])
    hist = fig.add_subplot(grid[1, 0], sharex=ax)
    per_class = fig.add_subplot(grid[:, 1])

    ax.bar(lefts[used], accuracy[used], widths[used], align="edge", color="#4c78a8", edgecolor="white",
           linewidth=0.6, label="accuracy in the bin")
    low, gap = np.minimum(accuracy, confidence), np.abs(confidence - accuracy)
    ax.bar(lefts[used], gap[used], widths[used], bottom=low[used], align="edge", color="#e45756", alpha=0.35,
           edgecolor="#c0392b", linewidth=0.6, hatch="///")
    ax.plot(confidence[used], confidence[used], linestyle="none", marker="_", markersize=7, color="#c0392b")
    right = 1.0 + (width if saturated else 0.0)
    (diagonal,) = ax.plot([0, 1], [0, 1], linestyle="--", color="0.35", linewidth=1.0, label="perfect calibration")
    ax.set_xlim(0, right)
    ax.set_ylim(0, 1.0)
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.25, linewidth=0.6)
    ax.tick_params(labelbottom=False)
    mean_accuracy, mean_confidence = float(accuracy @ count / total), float(confidence @ count / total)
    handles = [Patch(color="#4c78a8", label="accuracy in the bin"),
               Patch(facecolor="#e45756", alpha=0.35, edgecolor="#c0392b", hatch="///",
                     label="gap to the mean confidence (—)"), diagonal]
    ax.legend(handles=handles, loc="upper left", fontsize=8, framealpha=0.85, edgecolor="0.85")
    lean = "overconfident" if mean_confidence > mean_accuracy else "underconfident"
    ax.set_title(f"reliability: {int(total)} items in {bins} bins of the top-label confidence\naccuracy "
                 f"{mean_accuracy:.3f} · mean confidence {mean_confidence:.3f}: {lean} by "
                 f"{abs(mean_confidence - mean_accuracy):.3f}", fontsize=9)

    share = count / total
    hist.bar(lefts[used], share[used], widths[used], align="edge", color="0.55", edgecolor="white", linewidth=0.6)
    hist.set_ylim(0, max(float(share.max()), 1e-3) * 1.3)
    hist.set_ylabel("share of\nitems", fontsize=8)
    hist.set_xlabel("confidence (largest probability)")
    hist.grid(alpha=0.25, linewidth=0.6)
    hist.tick_params(labelsize=8)
    ticks = [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    labels = [f"{t:g}" for t in ticks]
    if saturated:
        ticks.append(1.0 + 0.5 * width)
        labels.append("=1")
        hist.annotate(f"{share[-1]:.0%}", (1.0 + 0.5 * width, share[-1]), xytext=(0, 2), textcoords="offset points",
                      ha="center", va="bottom", fontsize=7)
    hist.set_xticks(ticks, labels)

    limit = float((scale or {}).get("class_ece", max(class_ece.max(initial=0.0), 1e-6)))
    n = len(class_ece)
    if n <= 30:
        positions = np.arange(n)
        per_class.barh(positions, class_ece, color="#72b7b2", height=0.7 if n > 3 else 0.4)
        per_class.set_yticks(positions, [_short(c) for c in classes], fontsize=8 if n <= 15 else 6.5)
        per_class.invert_yaxis()
        per_class.set_xlim(0, limit * 1.25)
        if n <= 20:
            for y, value in zip(positions, class_ece, strict=True):
                per_class.text(min(value, limit * 1.25) + limit * 0.02, float(y), f"{value:.4f}", va="center", fontsize=7)
        per_class.set_xlabel("class ECE: p(class) against 1[label = class]")
        per_class.grid(axis="x", alpha=0.25, linewidth=0.6)
    else:  # many classes: one thin bar each, by class index
        per_class.bar(np.arange(n), class_ece, color="#72b7b2", width=1.0)
        per_class.set_ylim(0, limit * 1.1)
        per_class.set_xlabel("class index")
        per_class.set_ylabel("class ECE")
        per_class.grid(axis="y", alpha=0.25, linewidth=0.6)
    per_class.tick_params(axis="x", labelsize=8)
    axis = scale_note.replace("colour scale", "scale")
    per_class.set_title(f"each class's ECE (mean {class_ece.mean():.4f})\naxis: {axis}", fontsize=9)
    fig.suptitle(f"calibration, epoch {epoch}: ECE {ece:.4f}", fontsize=11)
    return fig
