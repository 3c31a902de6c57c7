"""Whether each attribution map deserves belief: deletion/insertion against random, and randomization."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .base import Stage, Summary, register_stage

if TYPE_CHECKING:
    from torch import Tensor, nn

    from ..analysis.runner import StageContext
    from ..trust import Cascade

# The attribution methods the stage can score (interp.attribution.METHODS computes them).
METHOD_NAMES = ("saliency", "smoothgrad", "integrated_gradients", "gradcam")
CORRELATION_LIMIT = 0.5  # the same as interp.trust.CORRELATION_LIMIT (checked by a test)
COMPLETENESS_LIMIT = 0.05
COLOURS = {"saliency": "C0", "smoothgrad": "C1", "integrated_gradients": "C3", "gradcam": "C2"}
COLUMNS = ["method", "deletion\nAUC ↓", "insertion\nAUC ↑", "random\ndel.", "random\nins.", "ρ random\nweights ↓",
           "verdict"]


class TrustOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Methods to score; default: every map the attribution stages drew this epoch.
    methods: list[str] | None = None
    steps: int = Field(20, ge=2, le=1000)  # perturbation steps from 0 to 100 % of the pixels
    images: int | None = Field(None, ge=1, le=10_000)  # probe images scored (default: the whole probe batch)
    random_rankings: int = Field(4, ge=1, le=100)  # random orders averaged for the "random" reference
    randomization: Literal["final", "always", "never"] = "final"
    ig_steps: int = Field(50, ge=2, le=2000)  # integrated-gradients steps when a map is recomputed
    seed: int = 0  # random rankings and re-initialized weights

    @field_validator("methods")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        for name in value or []:
            if name not in METHOD_NAMES:
                raise ValueError(f"unknown method {name!r} (known: {', '.join(METHOD_NAMES)})")
        return value


@register_stage
class TrustStage(Stage):
    name = "trust"
    description = ("a number beside every map: deletion/insertion AUC against random pixel orders every epoch, "
                   "and the model-randomization check at the final epoch; a verdict table")
    Options = TrustOptions
    runs_after = ("saliency", "integrated_gradients", "gradcam")  # scores the maps they drew

    def methods(self, ctx: StageContext) -> list[str]:
        from ..models import last_spatial_layer

        if self.options.methods:
            chosen = list(self.options.methods)
        else:
            shared = ctx.shared.get("maps", {})
            chosen = [m for m in METHOD_NAMES if m in shared] or ["saliency", "integrated_gradients", "gradcam"]
        if last_spatial_layer(ctx.model) is None and "gradcam" in chosen:
            chosen.remove("gradcam")
        return chosen

    def compute(self, method: str, model: nn.Module, x: Tensor, y: Tensor, baseline: Tensor) -> Tensor:
        from ..attribution import METHODS

        options: dict[str, Any] = {"steps": self.options.ig_steps, "smoothgrad_samples": 8}
        return METHODS[method].compute(model, x, y, baseline, options).detach()

    def _recompute(self, method: str, x: Tensor, y: Tensor, baseline: Tensor) -> Callable[[nn.Module], Tensor]:
        def compute(model: nn.Module) -> Tensor:
            return self.compute(method, model, x, y, baseline)

        return compute

    def run(self, ctx: StageContext) -> Summary:
        import torch

        from ..trust import auc, perturbation_curves, random_rankings, randomization_cascade, rank_pixels

        n = min(self.options.images or len(ctx.probe.x), len(ctx.probe.x))
        model, x, y = ctx.model, ctx.probe.x[:n], ctx.probe.y[:n]
        baseline = ctx.data.black(x)
        generator = torch.Generator().manual_seed(self.options.seed)
        steps = self.options.steps
        shared = ctx.shared.get("maps", {})
        maps = {m: (shared[m][:n] if m in shared else self.compute(m, model, x, y, baseline))
                for m in self.methods(ctx)}

        def curves(ranking: Tensor) -> dict[str, Tensor]:
            return {mode: perturbation_curves(model, x, y, baseline, ranking, steps, mode)
                    for mode in ("deletion", "insertion")}

        pixels = x.shape[-2] * x.shape[-1]
        randoms = [curves(random_rankings(n, pixels, generator)) for _ in range(self.options.random_rankings)]
        results: dict[str, dict[str, Any]] = {
            "random": {mode: torch.stack([r[mode] for r in randoms]).mean(0) for mode in ("deletion", "insertion")}}
        for method, values in maps.items():
            results[method] = curves(rank_pixels(values, generator))
        for method, result in results.items():
            for mode in ("deletion", "insertion"):
                result[f"{mode}_auc"] = float(auc(result[mode]).mean())
                ctx.record(f"{method}/{mode}_auc", result[f"{mode}_auc"])

        cascades: dict[str, Cascade] = {}
        if self.options.randomization == "always" or (self.options.randomization == "final" and ctx.final):
            for method in maps:
                # the reference map is recomputed inside, from the same noise as the randomized ones
                cascades[method] = randomization_cascade(model, self._recompute(method, x, y, baseline),
                                                         seed=self.options.seed)
                ctx.record(f"{method}/randomization_correlation", cascades[method].final)

        self.draw_curves(ctx, results)
        if cascades:
            self.draw_cascades(ctx, cascades)
        return self.summarize(ctx, results, cascades)

    # -- output ----------------------------------------------------------------------------------
    def summarize(self, ctx: StageContext, results: dict[str, dict[str, Any]],
                  cascades: dict[str, Cascade]) -> Summary:
        from ..trust import verdict

        random = results["random"]
        completeness = ctx.numbers.get("integrated_gradients/completeness_error")
        rows, report, doubts = [], {}, []
        for method, result in results.items():
            if method == "random":
                continue
            correlation = cascades[method].final if method in cascades else None
            error = completeness if method == "integrated_gradients" else None  # in the verdict when too large
            said = verdict(result["deletion_auc"], result["insertion_auc"], random["deletion_auc"],
                           random["insertion_auc"], correlation)
            if error is not None and error > COMPLETENESS_LIMIT:
                said = ("doubt: " if said == "trust" else said + ", ") + f"incomplete ({error:.0%})"
            rows.append([method, result["deletion_auc"], result["insertion_auc"], random["deletion_auc"],
                         random["insertion_auc"], correlation, said.split(":")[0]])
            if said != "trust":
                doubts.append(f"{method}: doubt ({said.removeprefix('doubt: ')})")
            report[method] = {"deletion_auc": result["deletion_auc"], "insertion_auc": result["insertion_auc"],
                              "random_deletion_auc": random["deletion_auc"],
                              "random_insertion_auc": random["insertion_auc"], "randomization_correlation": correlation,
                              "completeness_error": error, "verdict": said}
            if method in cascades:
                report[method]["cascade"] = dict(zip(cascades[method].layers, cascades[method].correlations,
                                                     strict=True))
        notes = [f"trust (epoch {ctx.epoch}, {len(next(iter(results.values()))['deletion'])} probe images): "
                 "deletion should fall below random, insertion rise above it; ρ is the rank correlation of |map| "
                 f"with every layer re-initialized (flagged above {CORRELATION_LIMIT})"]
        notes += doubts
        if not cascades:
            notes.append("the randomization check runs at the final epoch (trust: {randomization: always} for every "
                         "epoch)")
        curves = {m: {mode: r[mode].mean(0).tolist() for mode in ("deletion", "insertion")} for m, r in results.items()}
        ctx.save_json("trust.json", {"epoch": ctx.epoch, "methods": report, "curves": curves})  # strict JSON
        return Summary("Can you trust the maps?", COLUMNS, rows, notes)

    def draw_curves(self, ctx: StageContext, results: dict[str, dict[str, Any]]) -> None:
        import torch

        from ..plotting import figure

        fig, axes = figure(1, 2, panel=3.4)
        fractions = torch.linspace(0, 1, self.options.steps + 1).numpy()
        for ax, mode in zip(axes[0], ("deletion", "insertion"), strict=True):
            for method, result in results.items():
                style = {"color": "0.45", "linestyle": "--"} if method == "random" else {"color": COLOURS[method]}
                ax.plot(fractions, result[mode].mean(0).numpy(), label=f"{method} ({result[f'{mode}_auc']:.3f})",
                        **style)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            ax.set_xlabel(f"fraction of pixels {'deleted' if mode == 'deletion' else 'inserted'}")
            ax.set_ylabel("p(true class)")
            better = "lower" if mode == "deletion" else "higher"
            ax.set_title(f"{mode} (AUC; {better} is better)")
            ax.legend(fontsize=7.5, loc="upper right" if mode == "deletion" else "lower right")
            ax.grid(alpha=0.3)
        fig.suptitle(f"trust, epoch {ctx.epoch}: pixels ranked by each map vs random order (baseline black, "
                     f"mean of {len(ctx.probe.x[: self.options.images or None])} probe images)", fontsize=10)
        ctx.save_figure(fig, "deletion_insertion")

    def draw_cascades(self, ctx: StageContext, cascades: dict[str, Cascade]) -> None:
        from ..plotting import TileSheet, figure, grey_rgb, unsigned_rgb

        layers = next(iter(cascades.values())).layers
        fig, axes = figure(1, 1, panel=1.0)
        fig.set_size_inches(max(5.0, 0.55 * len(layers) + 2.5), 3.4)
        ax = axes[0, 0]
        steps = range(len(layers) + 1)
        for method, cascade in cascades.items():
            ax.plot(steps, [1.0, *cascade.correlations], marker="o", color=COLOURS[method],
                    label=f"{method} (final {cascade.final:.2f})")
        ax.axhline(CORRELATION_LIMIT, color="0.5", linestyle=":", linewidth=1)
        ax.set_xticks(list(steps), ["trained", *[f"−{short(layer)}" for layer in layers]], rotation=45, ha="right",
                      fontsize=8)
        ax.set_ylim(-0.3, 1.05)
        ax.set_ylabel("Spearman ρ of |map| with trained")
        ax.set_xlabel("layers re-initialized, top down (cumulative)")
        ax.legend(fontsize=7.5)
        ax.grid(alpha=0.3)
        ax.set_title(f"model randomization, epoch {ctx.epoch} (a map that stays above {CORRELATION_LIMIT} "
                     "ignores the weights)", fontsize=9)
        ctx.save_figure(fig, "randomization")

        tile = (int(ctx.probe.x.shape[-2]), int(ctx.probe.x.shape[-1]))
        sheet = TileSheet(len(cascades), len(layers) + 2, tile, zoom=max(1, 112 // max(tile)))
        for row, (method, cascade) in enumerate(cascades.items()):
            sheet.put(row, 0, grey_rgb(ctx.pixels(0)), method.replace("_", "\n"))
            sheet.put(row, 1, unsigned_rgb(cascade.trained[0].abs().numpy()), "trained")
            for col, (layer, values, rho) in enumerate(zip(cascade.layers, cascade.maps, cascade.correlations,
                                                           strict=True), start=2):
                sheet.put(row, col, unsigned_rgb(values[0].abs().numpy()), f"−{short(layer)}\nρ {rho:.2f}")
        ctx.save_figure(sheet.png(f"|map| of probe image 0 as layers are re-initialized from the top, epoch "
                                     f"{ctx.epoch} (ρ: mean over probe images)"), "randomization_maps")


def short(layer: str) -> str:
    """'features.conv3.0' → 'conv3'; 'head' → 'head'."""
    parts = [p for p in layer.split(".") if not p.isdigit() and p != "features"]
    return parts[-1] if parts else layer
