"""Weight and gradient histograms per layer, and a before/after picture of the weight distributions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .base import Stage, register_stage

if TYPE_CHECKING:
    from ..analysis.runner import StageContext


class WeightsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gradients: bool = True  # also histograms of ∂loss/∂weights on a fixed batch of evaluation data
    gradient_batch: int = Field(256, ge=1, le=65_536)
    bins: int = Field(60, ge=5, le=1000)


@register_stage
class WeightsStage(Stage):
    name = "weights"
    description = ("per-layer weight and gradient histograms (TensorBoard); epoch 0 vs now for every "
                   "weight tensor (PNG)")
    Options = WeightsOptions
    needs = frozenset()

    def run(self, ctx: StageContext) -> None:
        import torch
        from matplotlib.ticker import MaxNLocator

        from ..analysis.evaluation import item_losses
        from ..plotting import figure, grid_shape

        params = [(name, p) for name, p in ctx.model.named_parameters() if p.requires_grad]
        for name, p in params:
            ctx.histogram(f"weights/{name}", p.detach())
        ctx.record("weight_norm", float(torch.stack([(p.detach() ** 2).sum() for _, p in params]).sum().sqrt()))
        if self.options.gradients:
            n = self.options.gradient_batch
            x = ctx.data.normalize(ctx.data.eval_x[:n])
            loss = item_losses(ctx.model(x), ctx.data.eval_y[:n], ctx.data.task).mean()
            grads = torch.autograd.grad(loss, [p for _, p in params])  # leaves the training .grad alone
            for (name, _), g in zip(params, grads, strict=True):
                ctx.histogram(f"gradients/{name}", g)
            ctx.record("gradient_norm", float(torch.stack([(g ** 2).sum() for g in grads]).sum().sqrt()))

        matrices = [(name, p.detach().cpu().numpy().ravel()) for name, p in params if p.dim() > 1]
        initial = ctx.initial_state or {}
        rows, cols = grid_shape(len(matrices), min(3, len(matrices)))
        fig, axes = figure(rows, cols, panel=2.6)
        for ax in axes.flat[len(matrices):]:
            ax.set_axis_off()
        for ax, (name, now) in zip(axes.flat, matrices, strict=False):
            before = initial[name].cpu().numpy().ravel() if name in initial else None
            values = now if before is None else np.concatenate([now, before])
            low, high = np.percentile(values, [0.05, 99.95])
            bins = np.linspace(min(low, -high), max(high, -low), self.options.bins)
            # one filled step path per histogram (bars would be one patch per bin: slow to draw)
            if before is not None:
                counts, _ = np.histogram(np.clip(before, bins[0], bins[-1]), bins=bins)
                ax.stairs(counts, bins, fill=True, color="0.6", alpha=0.6, label="epoch 0")
            counts, _ = np.histogram(np.clip(now, bins[0], bins[-1]), bins=bins)
            ax.stairs(counts, bins, linewidth=1.4, color="C0", label=f"epoch {ctx.epoch}")
            spread = f"σ {before.std():.3f} → {now.std():.3f}" if before is not None else f"σ {now.std():.3f}"
            ax.set_title(f"{name} ({now.size:,})\n{spread}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(5))
            ax.set_yticks([])
        if matrices:
            axes.flat[0].legend(fontsize=7, loc="upper right")
        fig.suptitle(f"weight distributions: epoch 0 (grey) and epoch {ctx.epoch} (blue)")
        ctx.save_figure(fig, "weights")
