"""Weight histograms per layer, and a before/after picture of the weight distributions. (Gradients: the
``health`` stage, from the training's own steps.)"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..analysis.records import register_view
from .base import Stage, register_stage

if TYPE_CHECKING:
    from .base import StageContext


class WeightsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    bins: int = Field(60, ge=5, le=1000)


@register_stage
class WeightsStage(Stage):
    name = "weights"
    description = "per-layer weight histograms (TensorBoard); epoch 0 vs now for every weight tensor (PNG)"
    Options = WeightsOptions
    needs = frozenset()

    def run(self, ctx: StageContext) -> None:
        import torch

        params = [(name, p) for name, p in ctx.model.named_parameters() if p.requires_grad]
        for name, p in params:
            ctx.histogram(f"weights/{name}", p.detach())
        ctx.record("weight_norm", float(torch.stack([(p.detach() ** 2).sum() for _, p in params]).sum().sqrt()))

        initial = ctx.initial_state or {}
        panels = []
        for name, p in params:
            if p.dim() < 2:
                continue
            now = p.detach().float().cpu().numpy().ravel()
            before = initial[name].float().cpu().numpy().ravel() if name in initial and ctx.epoch > 0 else None
            values = now if before is None else np.concatenate([now, before])
            low, high = np.percentile(values, [0.05, 99.95])
            bins = np.linspace(min(low, -high), max(high, -low), self.options.bins)
            edges = (len(bins) - 1, (bins[0], bins[-1]))  # even bins as a count and range: no sort of the weights
            counts_now = np.histogram(np.clip(now, bins[0], bins[-1]), *edges)[0]
            counts_before = None if before is None else np.histogram(np.clip(before, bins[0], bins[-1]), *edges)[0]
            panels.append({"name": name, "shape": list(p.shape), "bins": bins, "now": counts_now,
                           "before": counts_before, "std_now": float(now.std()),
                           "std_before": None if before is None else float(before.std())})
        # histograms are counted here (small arrays); the figure is built by the drawing worker
        ctx.draw("weights", draw_weights, panels, ctx.epoch)


@register_view
def draw_weights(panels: list[dict[str, Any]], epoch: int) -> Any:
    """One histogram per weight tensor: epoch 0 filled grey behind the current epoch's outline."""
    from matplotlib.ticker import MaxNLocator

    from ..plotting import figure, grid_shape

    rows, cols = grid_shape(len(panels), min(3, len(panels)))
    fig, axes = figure(rows, cols, panel=2.6)
    for ax in axes.flat[len(panels):]:
        ax.set_axis_off()
    for ax, panel in zip(axes.flat, panels, strict=False):
        bins = panel["bins"]
        # one filled step path per histogram (bars would be one patch per bin: slow to draw)
        if panel["before"] is not None:
            ax.stairs(panel["before"], bins, fill=True, color="0.6", alpha=0.6, label="epoch 0")
        ax.stairs(panel["now"], bins, linewidth=1.4, color="C0", label=f"epoch {epoch}")
        shape = "×".join(map(str, panel["shape"]))
        count = int(np.prod(panel["shape"]))
        spread = (f"σ {panel['std_before']:.3f} → {panel['std_now']:.3f}" if panel["before"] is not None
                  else f"σ {panel['std_now']:.3f}")
        grouped = f"{count:,}".replace(",", "\u2009")  # 100 352: a count, not a shape
        ax.set_title(f"{panel['name']}\n{shape} = {grouped} weights\n{spread}", fontsize=8)  # fits the panel
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.yaxis.set_major_locator(MaxNLocator(4, integer=True))
        ax.set_ylabel("count", fontsize=7)
        ax.set_xlabel("weight", fontsize=7)
    title = (f"weight distributions: epoch 0 (grey) and epoch {epoch} (blue)" if panels and panels[0]["before"]
             is not None else f"weight distributions at epoch {epoch}" + (" (initialization)" if epoch == 0 else ""))
    fig.suptitle(title)
    return fig
