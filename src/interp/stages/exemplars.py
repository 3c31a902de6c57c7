"""Dataset exemplars: for a few units of a few layers, the evaluation images that make each fire most — and,
for a conv channel, the part of the image behind its strongest response.

One pass of the evaluation set with hooks on every chosen layer at once keeps, per image and unit, its
largest response (a conv channel's maximum over positions, and where) — no pass per layer. A conv channel's
crop is the box of input pixels whose gradient of that response is non-zero (the receptive field in
effect: one backward pass per unit for its exemplars together).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..analysis.records import register_view
from .base import Stage, register_stage

if TYPE_CHECKING:
    from torch import Tensor, nn

    from ..data import Data
    from .base import StageContext

__all__ = ["ExemplarsStage", "UnitExemplars", "draw_exemplars", "exemplar_panels", "exemplars", "receptive_boxes",
           "unit_responses"]


class ExemplarsOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    layers: list[str] | None = None  # default: three layers spread through the net (as the activations stage)
    units: int = Field(4, ge=1, le=64)  # per layer, the most active (largest mean of each image's top response)
    select: dict[str, list[int]] | None = None  # {layer: [unit, …]}: these units instead of the most active
    top: int = Field(8, ge=1, le=64)  # exemplars per unit
    batch_size: int = Field(500, ge=1, le=100_000)


def unit_responses(model: nn.Module, x: Tensor, names: list[str], batch_size: int = 500,
                   ) -> dict[str, tuple[Tensor, Tensor, tuple[int, ...]]]:
    """Per layer: every image's largest response of every unit (N, units), where it was (the flat position in
    the layer's spatial map; 0 for a dense layer) and the spatial shape (``()`` for a dense layer). One pass of
    ``x`` with hooks on all ``names`` together."""
    import torch

    from ..models import resolve_layer

    kept: dict[str, list[tuple[Tensor, Tensor]]] = {name: [] for name in names}
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []

    def hook_for(name: str):  # type: ignore[no-untyped-def]
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            out = output.detach().float()
            if out.dim() > 2:  # (B, C, *spatial): each channel's maximum over its positions, and where
                shapes[name] = tuple(out.shape[2:])
                values, where = out.flatten(2).max(dim=2)
            else:
                shapes[name] = ()
                values, where = out.flatten(1), torch.zeros_like(out.flatten(1), dtype=torch.long)
            kept[name].append((values, where))
        return hook

    try:
        for name in names:
            handles.append(resolve_layer(model, name)[1].register_forward_hook(hook_for(name)))
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                model(x[start:start + batch_size])
    finally:
        for handle in handles:
            handle.remove()
    return {name: (torch.cat([v for v, _ in kept[name]]), torch.cat([w for _, w in kept[name]]), shapes[name])
            for name in names}


def receptive_boxes(model: nn.Module, x: Tensor, layer: str, unit: int, positions: Tensor) -> np.ndarray:
    """For images ``x`` (k, C, H, W) and a conv ``unit`` of ``layer``: the box (top, left, bottom, right,
    exclusive) of input pixels whose gradient of the unit's response at ``positions`` (flat, one per image)
    is non-zero — the part of each image that response saw. The whole image where no gradient reaches it."""
    import torch

    from ..models import resolve_layer

    x = x.detach().clone().requires_grad_(True)
    kept: list[Tensor] = []
    handle = resolve_layer(model, layer)[1].register_forward_hook(lambda _m, _i, output: kept.append(output))
    try:
        with torch.enable_grad():
            model(x)
            response = kept[0][torch.arange(len(x)), unit].flatten(1)
            chosen = response.gather(1, positions[:, None].to(response.device))
            (grad,) = torch.autograd.grad(chosen.sum(), x)
    finally:
        handle.remove()
    seen = (grad.abs().sum(dim=1) > 0).cpu().numpy()  # (k, H, W)
    boxes = np.zeros((len(x), 4), dtype=np.int64)
    height, width = x.shape[-2:]
    for i, mask in enumerate(seen):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        boxes[i] = (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1) if len(rows) else (0, 0, height, width)
    return boxes


@register_stage
class ExemplarsStage(Stage):
    name = "exemplars"
    default = False  # a pass of the evaluation set and a backward pass per conv unit: ask for it
    needs = frozenset({"images"})
    description = ("for the most active units of three layers spread through the net: the evaluation images that "
                   "make each fire most (a conv channel: the crop its strongest response saw)")
    Options = ExemplarsOptions

    def prepare(self, model: nn.Module, data: Data) -> None:
        from ..models import resolve_layer

        for name in [*(self.options.layers or []), *(self.options.select or {})]:
            resolve_layer(model, name)

    def layers(self, model: nn.Module) -> list[str]:
        from ..models import resolve_layer
        from .activations import default_layers

        if self.options.select:
            return [resolve_layer(model, n)[0] for n in self.options.select]
        return [resolve_layer(model, n)[0] for n in self.options.layers] if self.options.layers \
            else default_layers(model)

    def run(self, ctx: StageContext) -> None:
        panels = exemplar_panels(self, ctx)
        ctx.keep("exemplars", [{k: v for k, v in p.items() if k != "pixels"} for p in panels])
        ctx.draw("exemplars", draw_exemplars, panels, list(ctx.data.classes),
                 [int(c) for c in ctx.data.eval_y.cpu()], ctx.epoch)


def exemplar_panels(stage: ExemplarsStage, ctx: StageContext) -> list[dict[str, Any]]:
    """Per layer of ``stage``: its units, their top exemplars (``index``, ``value``, ``pixels``) and, for conv
    channels, the ``boxes`` their strongest responses saw."""
    import torch

    from .top_losses import pixels_of

    data = ctx.data
    x = data.normalize(data.eval_x)
    names = stage.layers(ctx.model)
    responses = unit_responses(ctx.model, x, names, stage.options.batch_size)
    chosen_by_name = {}
    if stage.options.select:
        from ..models import resolve_layer

        chosen_by_name = {resolve_layer(ctx.model, n)[0]: units for n, units in stage.options.select.items()}
    panels = []
    for name in names:
        values, where, shape = responses[name]
        count = values.shape[1]
        if name in chosen_by_name:
            units = [u for u in chosen_by_name[name] if 0 <= u < count]
        else:  # the most active: the largest mean of each image's top response
            units = torch.argsort(values.mean(dim=0), descending=True, stable=True)[: stage.options.units].tolist()
        top = min(stage.options.top, len(x))
        index = torch.stack([torch.argsort(values[:, u], descending=True, stable=True)[:top] for u in units])
        value = torch.stack([values[index[i], u] for i, u in enumerate(units)])
        boxes = None
        if shape:  # a conv channel: the part of each exemplar its strongest response saw
            boxes = np.stack([receptive_boxes(ctx.model, x[index[i]], name, u, where[index[i], u])
                              for i, u in enumerate(units)])
        panels.append({"layer": name, "units": units, "spatial": list(shape), "index": index.cpu().numpy(),
                       "value": value.cpu().numpy(), "boxes": boxes,
                       "pixels": pixels_of(data, index.flatten()).cpu().numpy().reshape(*index.shape,
                                                                                      *data.input_shape)})
    return panels


CELL = 56  # pixels per exemplar panel


MARGIN = 34  # pixels left of the first column: a layer's name is wider than its panel


def layer_label(name: str, width: int = 16) -> str:
    """A layer's name as a panel's title holds it: whole, or its trailing parts that fit in ``width``
    characters (``layer4.1.conv2`` stays whole: a ResNet's blocks all hold a ``conv2``)."""
    parts = name.split(".")
    while len(parts) > 1 and len(".".join(parts)) > width:
        parts = parts[1:]
    return ".".join(parts)


def _fit(image: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(image.astype(np.uint8)).resize((CELL, CELL), Image.Resampling.NEAREST))


@register_view
def draw_exemplars(panels: list[dict[str, Any]], classes: list[str], labels: list[int], epoch: int) -> bytes:
    """Per layer, a row per unit: its first exemplar whole with the box its strongest response saw outlined
    (a conv channel) or the mean of its exemplars (a dense unit), then its top exemplars (a conv channel's:
    those crops), titled with the response and the image's class."""
    from ..plotting import TileSheet
    from .top_losses import _rgb

    rows = sum(len(p["units"]) for p in panels)
    cols = max((len(np.asarray(p["index"])[0]) if len(p["units"]) else 0 for p in panels), default=1)
    sheet = TileSheet(max(rows, 1), max(cols, 1) + 1, (CELL, CELL), zoom=1, margin=MARGIN)
    row = 0
    for panel in panels:
        index, value = np.asarray(panel["index"]), np.asarray(panel["value"])
        pixels, boxes = np.asarray(panel["pixels"]), panel["boxes"]
        for i, unit in enumerate(panel["units"]):
            short = layer_label(panel["layer"])
            for j in range(index.shape[1]):
                image = _rgb(pixels[i, j])
                if boxes is not None:
                    top, left, bottom, right = np.asarray(boxes)[i, j]
                    if j == 0:  # the first exemplar whole, its box outlined
                        whole = image.copy()
                        whole[top:bottom, [left, right - 1]] = whole[[top, bottom - 1], left:right] = (230, 40, 40)
                        sheet.put(row, 0, _fit(whole), f"{short}\nchannel {unit}")
                    image = image[top:bottom, left:right]
                elif j == 0:  # a dense unit: the mean of its exemplars
                    mean = _rgb(pixels[i].astype(np.float32).mean(axis=0).round())
                    sheet.put(row, 0, _fit(mean), f"{short}\nunit {unit}: mean")
                sheet.put(row, j + 1, _fit(image), f"{value[i, j]:.2g}\n{classes[labels[int(index[i, j])]]}")
            row += 1
    return sheet.png(f"exemplars, epoch {epoch}: the evaluation images that make each unit fire most (a conv "
                     "channel: the crop its strongest response saw), with the response and the image's class")


# -- reading them back -----------------------------------------------------------------------------------------


@dataclass
class UnitExemplars:
    """One unit's exemplars at one analysis epoch, most responsive first: evaluation-set ``index``, the
    unit's largest ``value`` on each, the images' ``labels`` (class names), their ``pixels`` (k, C, H, W)
    uint8 and, for a conv channel, the ``boxes`` (k, 4: top, left, bottom, right) its strongest response saw."""

    layer: str
    unit: int
    epoch: int | None
    index: np.ndarray
    value: np.ndarray
    labels: list[str]
    pixels: np.ndarray
    boxes: np.ndarray | None

    @property
    def crops(self) -> list[np.ndarray]:
        """Each exemplar cut to its box (a conv channel), or whole (a dense unit); (C, h, w) uint8."""
        if self.boxes is None:
            return list(self.pixels)
        return [image[:, top:bottom, left:right]
                for image, (top, left, bottom, right) in zip(self.pixels, self.boxes, strict=True)]


def exemplars(run: Path | str, layer: str | None = None, unit: int | None = None,
              epoch: int | str | None = None) -> list[UnitExemplars]:
    """The exemplars the ``exemplars`` stage recorded in ``run``: every unit's, or those of ``layer`` (and
    ``unit``), at ``epoch`` (a number or a folder such as ``"analysis/best"``; default the latest epoch with
    the stage's record). Reads the record only: no model, no data."""
    from ..analysis.examples import _latest
    from ..analysis.records import load_record, read_record
    from ..errors import UserError

    record = load_record(run, "exemplars", epoch) if isinstance(epoch, str) else \
        read_record(_latest(Path(run), "exemplars", epoch))
    fields = record.figures["exemplars"]["fields"]
    classes, labels = list(fields["classes"]), [int(c) for c in fields["labels"]]
    chosen = []
    for panel in fields["panels"]:
        if layer is not None and panel["layer"] != layer:
            continue
        for i, u in enumerate(panel["units"]):
            if unit is not None and int(u) != unit:
                continue
            index = np.asarray(panel["index"])[i]
            boxes = panel["boxes"]
            chosen.append(UnitExemplars(panel["layer"], int(u), record.epoch, index, np.asarray(panel["value"])[i],
                                        [classes[labels[int(j)]] for j in index], np.asarray(panel["pixels"])[i],
                                        None if boxes is None else np.asarray(boxes)[i]))
    if not chosen:
        kept = ", ".join(f"{p['layer']} {list(p['units'])}" for p in fields["panels"])
        raise UserError(f"{record.path}: no exemplars of {layer or 'any layer'}"
                        f"{'' if unit is None else f' unit {unit}'}; it holds {kept}")
    return chosen
