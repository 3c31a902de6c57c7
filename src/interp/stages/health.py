"""Training health: each layer's activations, gradients and updates over training, and what looks wrong.

The numbers come from the training's own steps (:mod:`interp.analysis.health`, every ``every``-th optimiser
step); this stage draws them from the epochs recorded so far and diagnoses them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..analysis.health import (
    BINS,
    DEAD,
    EVERY,
    SATURATED,
    UPDATE_HIGH,
    UPDATE_LOW,
    diagnose,
    epochs_text,
    weight_tensors,
)
from ..analysis.records import register_view
from .base import Stage, Summary, register_stage

if TYPE_CHECKING:
    from ..analysis.health import EpochHealth
    from .base import StageContext

__all__ = ["HealthStage", "draw_activity", "draw_dead", "draw_steps"]


class HealthOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    every: int = Field(EVERY, ge=1, le=1_000_000)  # optimiser steps between samples
    bins: int = Field(BINS, ge=4, le=400)  # histogram bins of each layer's outputs


def _is_activation(kind: str) -> bool:
    return not (kind in ("Linear", "Bilinear") or kind.startswith("Conv"))


@register_stage
class HealthStage(Stage):
    name = "health"
    needs = frozenset({"health"})
    description = ("each layer's activations (histograms over training, dead and saturated units), gradient norms "
                   "and update ratios from the training's own steps, and a table of findings")
    Options = HealthOptions

    def run(self, ctx: StageContext) -> Summary:
        history: list[EpochHealth] = ctx.health.until(ctx.epoch)
        last = history[-1]
        weights = weight_tensors(last)
        for m, (name, kind) in enumerate(zip(last.modules, last.kinds, strict=True)):
            if _is_activation(kind):
                ctx.record(f"dead/{name}", float(last.dead[m]))
                if last.bounded[m]:
                    ctx.record(f"saturated/{name}", float(np.nanmean(last.saturated[m])))
        for p in weights:
            ctx.record(f"grad_norm/{last.params[p]}", float(np.nanmean(last.grad[:, p])))
            ctx.record(f"update_ratio/{last.params[p]}", float(np.nanmedian(last.update[:, p])))
        findings = diagnose(history)
        ctx.record("findings", len(findings))

        times = np.concatenate([e.times for e in history])
        epochs = [e.epoch for e in history]
        shown = [m for m, name in enumerate(last.modules)
                 if all(name in e.modules for e in history)]  # modules every epoch saw
        panels = []
        for m in shown:
            name = last.modules[m]
            rows = [e.hist[e.modules.index(name)] for e in history]
            panels.append({"name": name, "kind": last.kinds[m], "units": int(last.units[m]),
                           "range": [float(v) for v in last.ranges[m]], "hist": np.concatenate(rows).astype(np.float32),
                           "mean": np.concatenate([e.mean[e.modules.index(name)] for e in history])})
        if panels:  # none under torch.compile: only the optimiser's steps were seen
            ctx.draw("activity", draw_activity, panels, times, ctx.epoch)
        names = [last.params[p] for p in weights]
        grad = np.concatenate([e.grad[:, weights] for e in history]).T if weights else np.zeros((0, len(times)))
        update = np.concatenate([e.update[:, weights] for e in history]).T if weights else np.zeros((0, len(times)))
        if names:
            ctx.draw("steps", draw_steps, names, times, grad, update, ctx.epoch)
        activations = [m for m in shown if _is_activation(last.kinds[m])]
        lines = [{"name": last.modules[m], "bounded": bool(last.bounded[m]),
                  "dead": [float(e.dead[e.modules.index(last.modules[m])]) for e in history],
                  "saturated": [float(np.nanmean(e.saturated[e.modules.index(last.modules[m])])) for e in history]}
                 for m in activations]
        if lines:
            ctx.draw("dead", draw_dead, lines, epochs, ctx.epoch)

        rows = []
        for rule in dict.fromkeys(f.rule for f in findings):  # one row per rule, its layers together
            found = [f for f in findings if f.rule == rule]
            layers = ", ".join(f.layer for f in found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
            epochs_held = sorted({e for f in found for e in f.epochs})
            rows.append([rule, layers, epochs_text(epochs_held), found[0].evidence
                         + (f" ({found[0].layer})" if len(found) > 1 else ""), found[0].suggestion])
        marks: list[str | None] = ["bad"] * len(rows)
        if not rows:
            rows, marks = [["no findings", "", "", f"epochs {epochs_text(epochs)}", ""]], ["good"]
        sampled = sum(len(e.times) for e in history)
        notes = [f"from {sampled} sampled training steps (every {self.options.every}th of each epoch, the first "
                 f"included); a finding holds in the latest epoch and in at least half of the epochs so far",
                 f"limits: dead units > {DEAD:.0%} of a layer; saturation > {SATURATED:.0%} of outputs; gradient norm "
                 f"below 1/100 or above 100× the last layer's; median update ratio outside "
                 f"[{UPDATE_LOW:g}, {UPDATE_HIGH:g}]"]
        if not last.modules:
            notes.append("the layers' outputs were not recorded (train.compile: a compiled model does not call "
                         "forward hooks added to it); gradients and update ratios were")
        ctx.keep("findings", [f.__dict__ for f in findings])
        return Summary("Training health", ["finding", "layer", "epochs", "evidence", "suggestion"], rows, notes,
                       marks=marks, terminal=ctx.final)


FLOOR = 1e-4  # the colour scale's lowest share: one output in 10,000 (fewer: the same darkest colour)


@register_view
def draw_activity(panels: list[dict[str, Any]], times: np.ndarray, epoch: int) -> Any:
    """Per layer the histogram of its outputs at every sampled step (x: epochs, y: value, colour: log count)
    — the "colourful dimension" — with the mean as a white line."""
    from matplotlib.colors import LogNorm

    from ..plotting import figure, grid_shape

    rows, cols = grid_shape(len(panels), min(3, max(len(panels), 1)))
    fig, axes = figure(rows, cols, panel=2.8)
    for ax in axes.flat[len(panels):]:
        ax.set_axis_off()
    times = np.asarray(times)
    edges_t = _edges(times)
    for ax, panel in zip(axes.flat, panels, strict=False):
        hist = np.asarray(panel["hist"], dtype=np.float64)  # (steps, bins)
        low, high = panel["range"]
        share = hist / np.maximum(hist.sum(axis=1, keepdims=True), 1)
        image = ax.pcolormesh(edges_t, np.linspace(low, high, hist.shape[1] + 1), np.where(share > 0, share, np.nan).T,
                              norm=LogNorm(FLOOR, 1.0), cmap="magma", shading="flat")
        ax.plot(times, np.clip(np.asarray(panel["mean"]), low, high), color="white", linewidth=1.0, label="mean")
        ax.set_title(f"{panel['name']} ({panel['kind']}, {panel['units']} units)", fontsize=8)
        ax.set_xlabel("epoch", fontsize=7)
        ax.set_ylabel("output value", fontsize=7)
        ax.tick_params(labelsize=7)
    if panels:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, label="share of outputs (log)")
    fig.suptitle(f"layer outputs over training, through epoch {epoch} (values beyond the range in the end bins)")
    return fig


@register_view
def draw_steps(names: list[str], times: np.ndarray, grad: np.ndarray, update: np.ndarray, epoch: int) -> Any:
    """Two layer × time heat maps: the update ratio ‖Δw‖/‖w‖ (healthy about 1e-3: white, too small blue, too
    large red) and the gradient norm, both on log scales."""
    from matplotlib.colors import LogNorm, TwoSlopeNorm

    from ..plotting import figure

    grad, update = np.asarray(grad, dtype=np.float64), np.asarray(update, dtype=np.float64)
    fig, axes = figure(1, 2, panel=4.0, squeeze=True)
    fig.set_size_inches(10.0, min(2.2 + 0.28 * len(names), 14.0))  # a row per weight tensor, not a square
    t = _edges(np.asarray(times))
    y = np.arange(len(names) + 1) - 0.5
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log10(np.where(update > 0, update, np.nan))
    image = axes[0].pcolormesh(t, y, np.clip(ratio, -6, 0), cmap="RdBu_r", shading="flat",
                               norm=TwoSlopeNorm(-3.0, -6.0, 0.0))
    bar = fig.colorbar(image, ax=axes[0], label="log₁₀ ‖Δw‖/‖w‖ per step")
    for limit in (UPDATE_LOW, UPDATE_HIGH):
        bar.ax.axhline(np.log10(limit), color="black", linewidth=1.0)
    axes[0].set_title("update ratio (lines on the bar: the healthy band)", fontsize=9)
    finite = grad[np.isfinite(grad) & (grad > 0)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (1e-8, 1.0)
    image = axes[1].pcolormesh(t, y, np.where(grad > 0, grad, np.nan), cmap="viridis", shading="flat",
                               norm=LogNorm(low, max(high, low * 10)))
    fig.colorbar(image, ax=axes[1], label="gradient norm ‖∂loss/∂w‖")
    axes[1].set_title("gradient norm", fontsize=9)
    for ax in axes:
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.invert_yaxis()  # the first layer on top
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"weight tensors at the sampled training steps, through epoch {epoch}")
    return fig


@register_view
def draw_dead(lines: list[dict[str, Any]], epochs: list[int], epoch: int) -> Any:
    """Per activation layer and epoch: the fraction of its units dead (zero on every sampled example) and, for
    a bounded activation, the fraction of its outputs saturated; the finding limits dashed."""
    from matplotlib.ticker import MaxNLocator

    from ..plotting import figure

    bounded = any(line["bounded"] for line in lines)
    fig, axes = figure(1, 2 if bounded else 1, panel=3.4)
    axes = axes.ravel()
    for i, line in enumerate(lines):
        if not line["bounded"] or max(line["dead"], default=0) > 0:  # a tanh or sigmoid is never exactly 0
            axes[0].plot(epochs, line["dead"], marker="o", color=f"C{i % 10}", label=line["name"])
        if line["bounded"]:
            axes[1].plot(epochs, line["saturated"], marker="o", color=f"C{i % 10}", label=line["name"])
    for ax, limit, what in zip(axes, (DEAD, SATURATED), ("dead units (share of the layer's units)",
                                                         "saturated outputs (within 1% of the bounds)"), strict=False):
        ax.axhline(limit, color="0.4", linestyle="--", linewidth=1.0, label=f"finding above {limit:.0%}")
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlim(min(epochs, default=1) - 0.3, max(epochs, default=1) + 0.3)
        ax.set_xlabel("epoch", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(what, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="upper left")
    if not axes[0].get_lines()[:-1]:  # only the limit's line
        axes[0].text(0.5, 0.5, "no unit was dead\n(no ReLU-like activations)", ha="center", va="center",
                     transform=axes[0].transAxes, color="0.4")
    fig.suptitle(f"dead {'and saturated ' if bounded else ''}units, through epoch {epoch}", fontsize=10)
    return fig


def _edges(times: np.ndarray) -> np.ndarray:
    """Cell edges around sampled times (each step's cell reaches halfway to its neighbours)."""
    if len(times) == 0:
        return np.array([0.0, 1.0])
    if len(times) == 1:
        return np.array([times[0] - 0.5, times[0] + 0.5])
    middle = (times[1:] + times[:-1]) / 2
    return np.concatenate([[times[0] - (middle[0] - times[0])], middle, [times[-1] + (times[-1] - middle[-1])]])
