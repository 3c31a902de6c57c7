"""Feature visualisation: for the units the exemplars stage shows and for every class, an input optimised to
make it fire (:func:`interp.visualize`, in :mod:`interp.optvis`), beside the unit's exemplars."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..analysis.records import register_view
from .base import Stage, register_stage
from .exemplars import ExemplarsStage

if TYPE_CHECKING:
    from torch import nn

    from ..data import Data
    from .base import StageContext

__all__ = ["FeatureVisualizationStage", "draw_class_sheet", "draw_unit_sheet"]


class FeatureVisualizationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    every: int | None = Field(None, ge=1, le=100_000)  # also every N-th epoch (None: the final analysis only)
    layers: list[str] | None = None  # default: three layers spread through the net (as the exemplars stage)
    units: int = Field(4, ge=1, le=64)  # per layer, the most active
    select: dict[str, list[int]] | None = None  # {layer: [unit, …]} instead of the most active
    steps: int = Field(256, ge=1, le=10_000)  # Adam steps per image
    lr: float = Field(0.05, gt=0, le=10)
    exemplars: int = Field(4, ge=0, le=16)  # shown beside each unit's image
    classes: bool = True  # a sheet of every class's image too


@register_stage
class FeatureVisualizationStage(Stage):
    name = "feature_visualization"
    default = False  # a few hundred optimisation steps per image: ask for it
    needs = frozenset({"images"})
    description = ("inputs optimised to make units (and every class logit) fire — Fourier-parametrised, jittered, "
                   "scaled and rotated — beside the units' exemplars; the final epoch by default")
    Options = FeatureVisualizationOptions

    def prepare(self, model: nn.Module, data: Data) -> None:
        self._exemplars().prepare(model, data)

    def _exemplars(self) -> ExemplarsStage:
        from .exemplars import ExemplarsOptions

        return ExemplarsStage(ExemplarsOptions(layers=self.options.layers, units=self.options.units,
                                               select=self.options.select, top=max(self.options.exemplars, 1),
                                               batch_size=500))

    def run(self, ctx: StageContext) -> None:
        every = self.options.every
        if not ctx.final and not (every and ctx.epoch % every == 0):
            return
        import torch

        from ..models import first_weight_layer
        from ..optvis import visualize
        from .exemplars import exemplar_panels

        data = ctx.data
        shape = tuple(data.input_shape)
        mean, std = (data.mean or None), (data.std or None)
        panels = exemplar_panels(self._exemplars(), ctx)
        total = sum(len(p["units"]) for p in panels) + (len(data.classes) if self.options.classes else 0)
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            if done % 32 == 0:
                ctx.status(f"step {done} of {total * self.options.steps}")

        first = first_weight_layer(ctx.model)
        weights = first.weight.detach().flatten(1).float().cpu().numpy() if isinstance(first, torch.nn.Linear) \
            else None
        units_out = []
        for panel in panels:
            images = visualize(ctx.model, panel["layer"], panel["units"], input_shape=shape, mean=mean, std=std,
                               steps=self.options.steps, lr=self.options.lr, seed=0, advance=advance)
            pixels = _pixels(images, data)
            # a first dense layer's unit looks for its weight image: how alike the two are
            similar = None
            if weights is not None and not panel["spatial"] and _feeds_from_input(ctx.model, panel["layer"], first):
                similar = [float(np.corrcoef(pixels[i].reshape(-1).astype(np.float64), weights[u])[0, 1])
                           for i, u in enumerate(panel["units"])]
            units_out.append({**panel, "pixels": panel["pixels"][:, : self.options.exemplars],
                              "index": panel["index"][:, : self.options.exemplars],
                              "value": panel["value"][:, : self.options.exemplars],
                              "boxes": None if panel["boxes"] is None else panel["boxes"][:, : self.options.exemplars],
                              "visualized": pixels, "weight_correlation": similar})
        ctx.keep("units", [{k: v for k, v in p.items() if k not in ("pixels", "visualized")} for p in units_out])
        ctx.draw("units", draw_unit_sheet, units_out, list(data.classes), [int(c) for c in data.eval_y.cpu()],
                 ctx.epoch)
        if self.options.classes:
            targets = list(range(len(data.classes)))
            images = visualize(ctx.model, target=targets, input_shape=shape, mean=mean, std=std,
                               steps=self.options.steps, lr=self.options.lr, seed=0, advance=advance)
            with torch.no_grad():
                probs = torch.softmax(ctx.model(images).float(), dim=1)
            chosen = probs[torch.arange(len(targets)), torch.tensor(targets, device=probs.device)]
            ctx.record("class_probability", float(chosen.mean()))
            ctx.keep("class_probability", chosen.cpu().numpy())
            ctx.draw("classes", draw_class_sheet, _pixels(images, data), list(data.classes), chosen.cpu().numpy(),
                     ctx.epoch)


def _pixels(images: Any, data: Data) -> np.ndarray:
    """Inputs in the model's space as drawn: (n, C, H, W) uint8."""
    import torch

    pixels = data.denormalize(images) if data.mean else images
    return (pixels.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def _feeds_from_input(model: nn.Module, layer: str, first: nn.Module) -> bool:
    """Whether ``layer`` is the first weight layer or the block holding it (its units are the first layer's)."""
    name = next(n for n, m in model.named_modules() if m is first)
    return name == layer or name.startswith(f"{layer}.")


CELL = 56


@register_view
def draw_unit_sheet(panels: list[dict[str, Any]], classes: list[str], labels: list[int], epoch: int) -> bytes:
    """A row per unit: the optimised input, then its exemplars (a conv channel's: the crops its strongest
    response saw)."""
    from ..plotting import TileSheet
    from .exemplars import MARGIN, _fit, layer_label
    from .top_losses import _rgb

    rows = sum(len(p["units"]) for p in panels)
    cols = 1 + max((np.asarray(p["index"]).shape[1] for p in panels), default=0)
    sheet = TileSheet(max(rows, 1), cols, (CELL, CELL), zoom=1, margin=MARGIN)
    row = 0
    for panel in panels:
        short = layer_label(panel["layer"])
        index, value, pixels = np.asarray(panel["index"]), np.asarray(panel["value"]), np.asarray(panel["pixels"])
        for i, unit in enumerate(panel["units"]):
            kind = "channel" if panel["spatial"] else "unit"
            similar = panel.get("weight_correlation")
            note = f"\nρ w: {similar[i]:.2f}" if similar else ""
            sheet.put(row, 0, _fit(_rgb(np.asarray(panel["visualized"])[i])), f"{short}\n{kind} {unit}{note}")
            for j in range(index.shape[1]):
                image = _rgb(pixels[i, j])
                if panel["boxes"] is not None:
                    top, left, bottom, right = np.asarray(panel["boxes"])[i, j]
                    image = image[top:bottom, left:right]
                sheet.put(row, j + 1, _fit(image), f"{value[i, j]:.2g}\n{classes[labels[int(index[i, j])]]}")
            row += 1
    return sheet.png(f"feature visualisation, epoch {epoch}: per unit the input optimised to make it fire "
                     "(first column), then the evaluation images that make it fire most")


@register_view
def draw_class_sheet(pixels: np.ndarray, classes: list[str], probability: np.ndarray, epoch: int) -> bytes:
    """One optimised input per class, titled with the model's probability of that class on it."""
    from ..plotting import TileSheet
    from .exemplars import _fit
    from .top_losses import _rgb

    pixels = np.asarray(pixels)
    cols = min(len(classes), 5)
    sheet = TileSheet(-(-len(classes) // cols), cols, (CELL * 2, CELL * 2), zoom=1)
    for k, name in enumerate(classes):
        image = np.asarray(_fit(_rgb(pixels[k])))
        big = np.repeat(np.repeat(image, 2, axis=0), 2, axis=1)
        sheet.put(k // cols, k % cols, big, f"{name}\np {float(probability[k]):.2f}")
    return sheet.png(f"feature visualisation, epoch {epoch}: per class the input optimised for its logit "
                     "(p: the model's probability of that class on it)")
