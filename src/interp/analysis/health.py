"""Training health: what every layer's activations, gradients and updates do while the network learns.

A :class:`Health` watches a model and its optimiser (:meth:`Health.watch`, a context manager that always
removes its hooks). Every ``every``-th optimiser step of an epoch (the first one included) it keeps, on the
device and without waiting for it:

- for every Linear/Conv layer and every activation module, from the training forward pass: the sum and sum
  of squares of its outputs, how many were saturated (tanh, sigmoid and the like: within 1 % of their bounds),
  a histogram over a fixed range (the "colourful dimension"), and which units (channels of a conv) were
  non-zero on any example;
- for every parameter tensor, from the optimiser step: the gradient's norm, the update's norm relative to the
  weight's (‖Δw‖ / ‖w‖) and the weight's norm.

At the end of the epoch (:meth:`Health.end_epoch`) they move to the host once, summed over processes under
torchrun, as an :class:`EpochHealth`, kept as the ``health`` part of the run's ``training/epoch_NNN.npz``
records.
:func:`diagnose` reads the epochs and names what looks wrong, each rule with its documented limit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

PART = "health"  # the part of the run's training/epoch_NNN.npz records
EVERY = 50  # optimiser steps between samples (the first step of every epoch is sampled)
BINS = 40  # histogram bins per layer and sampled step

# the rules' limits (README: "Training health"), each with where it comes from
DEAD = 0.25  # a layer with more than this fraction of its units zero on every example of an epoch
SATURATED = 0.25  # a tanh/sigmoid layer with more than this fraction of its outputs within 1 % of the bounds
VANISHING, EXPLODING = 1e-2, 1e2  # a weight's gradient norm against the last layer's
UPDATE_LOW, UPDATE_HIGH = 1e-4, 1e-2  # the median ‖Δw‖ / ‖w‖ of an epoch's sampled steps


def _kinds() -> tuple[tuple[type, ...], tuple[type, ...], dict[type, tuple[float, float]], tuple[type, ...]]:
    from torch import nn

    layers = (nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
              nn.ConvTranspose3d)
    activations = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
                   nn.Mish, nn.Softplus, nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardsigmoid, nn.Hardswish, nn.Softsign,
                   nn.Tanhshrink, nn.LogSigmoid)
    bounded = {nn.Tanh: (-1.0, 1.0), nn.Sigmoid: (0.0, 1.0), nn.Hardsigmoid: (0.0, 1.0), nn.Softsign: (-1.0, 1.0)}
    positive = (nn.ReLU, nn.ReLU6, nn.Softplus)
    return layers, activations, bounded, positive


def watched_modules(model: Any) -> list[tuple[str, Any, tuple[float, float], bool]]:
    """``(name, module, histogram range, bounded)`` for every Linear/Conv layer and activation module of
    ``model``: a bounded activation's range is its bounds, a ReLU's [0, 10], any other [-10, 10]."""
    from torch.nn import Hardtanh as hardtanh

    layers, activations, bounded, positive = _kinds()
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, layers + activations):
            continue
        if type(module) is hardtanh:  # not ReLU6, whose flat part at 0 is what "dead" counts
            out.append((name, module, (float(module.min_val), float(module.max_val)), True))
        elif type(module) in bounded:
            out.append((name, module, bounded[type(module)], True))
        else:
            out.append((name, module, (0.0, 10.0) if isinstance(module, positive) else (-10.0, 10.0), False))
    return out


def _unit_dim(module: Any, output: Any) -> int:
    """Which dimension holds the units: channels (1) of a conv's output and of anything with spatial
    dimensions; the last one otherwise (a Linear's features, a sequence model's)."""
    from torch import nn

    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    return 1 if output.dim() >= 4 or (output.dim() == 3 and isinstance(module, conv)) else -1


@dataclass
class EpochHealth:
    """One epoch's numbers on the host: per watched module (``modules``) and per parameter tensor (``params``),
    at each sampled step (``times``: the epoch's fraction done, e.g. 2.25)."""

    epoch: int
    times: np.ndarray  # (S,) sampled steps as fractional epochs
    modules: list[str]
    kinds: list[str]  # the modules' class names
    ranges: np.ndarray  # (M, 2) each module's histogram range
    bounded: np.ndarray  # (M,) bool: saturation means something
    units: np.ndarray  # (M,) units (channels) per module
    dead: np.ndarray  # (M,) fraction of units zero on every sampled example of the epoch
    mean: np.ndarray  # (M, S) output mean per sampled step
    std: np.ndarray  # (M, S)
    saturated: np.ndarray  # (M, S) fraction of outputs within 1 % of the bounds (0 for unbounded modules)
    hist: np.ndarray  # (M, S, BINS) output histogram counts (values beyond the range in the end bins)
    params: list[str]
    grad: np.ndarray  # (S, P) gradient norm (NaN: no gradient at that step)
    update: np.ndarray  # (S, P) ‖Δw‖ / ‖w‖ of the step
    norm: np.ndarray  # (S, P) ‖w‖ after the step
    shapes: list[list[int]]  # the parameters' shapes

    def record_data(self) -> dict[str, Any]:
        """The record's fields: a few arrays (each array costs a record entry to encode and read)."""
        return {"modules": self.modules, "kinds": self.kinds, "params": self.params, "shapes": self.shapes,
                "times": self.times,
                "layers": np.column_stack([self.ranges, self.bounded, self.units, self.dead]),  # (M, 5)
                "stats": np.stack([self.mean, self.std, self.saturated], axis=-1),  # (M, S, 3)
                "hist": self.hist,  # (M, S, bins)
                "norms": np.stack([self.grad, self.update, self.norm], axis=-1)}  # (S, P, 3)

    @classmethod
    def from_record(cls, epoch: int, data: dict[str, Any]) -> EpochHealth:
        layers = np.asarray(data["layers"], dtype=np.float64).reshape(-1, 5)
        stats, norms = np.asarray(data["stats"]), np.asarray(data["norms"])
        return cls(epoch=epoch, times=np.asarray(data["times"]), modules=list(data["modules"]),
                   kinds=list(data["kinds"]), ranges=layers[:, :2], bounded=layers[:, 2].astype(bool),
                   units=layers[:, 3].astype(np.int64), dead=layers[:, 4], mean=stats[..., 0], std=stats[..., 1],
                   saturated=stats[..., 2], hist=np.asarray(data["hist"]), params=list(data["params"]),
                   grad=norms[..., 0], update=norms[..., 1], norm=norms[..., 2],
                   shapes=[list(shape) for shape in data["shapes"]])


@dataclass
class _Slot:
    """One watched module's numbers for the epoch so far: device tensors per sampled call, host counts."""

    name: str
    module: Any
    span: tuple[float, float]
    bounded: bool
    activation: bool  # dead units are counted for activation modules (a layer's own outputs are rarely 0)
    moments: list[Any] = field(default_factory=list)  # per sampled call: (Σx, Σx²) of its outputs
    hists: list[Any] = field(default_factory=list)  # per sampled call: histogram counts
    saturated: list[Any] = field(default_factory=list)  # per sampled call: outputs near the bounds (bounded only)
    counts: list[int] = field(default_factory=list)  # outputs per sampled call
    steps: list[int] = field(default_factory=list)  # the step of each call
    alive: Any = None  # (units,) bool: non-zero on some example (activation modules)

    def clear(self) -> None:
        self.moments, self.hists, self.saturated, self.counts, self.steps, self.alive = [], [], [], [], [], None


class Health:
    """Watches a model's layers and its optimiser's steps; see the module's documentation."""

    def __init__(self, every: int = EVERY, bins: int = BINS, layers: bool = True):
        self.every = every
        self.bins = bins
        # the layers' outputs too (False under torch.compile: a compiled graph does not call forward hooks
        # added after it was compiled, so only the optimiser's steps are seen)
        self.layers = layers
        self.history: list[EpochHealth] = []
        self.slots: list[_Slot] = []
        self.params: list[tuple[str, Any]] = []
        self.step = 0  # optimiser steps this epoch
        self.sampling = True  # the coming step is sampled
        self.param_rows: list[Any] = []  # per sampled step: the (gradient, update, weight) norms, 3 lists of P
        self.param_steps: list[int] = []
        self._before: list[Any] | None = None
        self._no_grad: list[Any] = []  # a NaN per parameter, the norm of a gradient that is not there
        self._ones_kept: dict[Any, Any] = {}
        self._copies: list[Any] = []  # the weights before a sampled step (kept between samples)
        self._scratch: dict[Any, tuple[Any, Any]] = {}  # per device: a float and an index buffer for histograms
        self._watching = False  # inside watch()
        self._attached: list[Any] = []  # the layers' hooks, while a sampled step runs

    # -- watching ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def watch(self, model: Any, optimizer: Any) -> Iterator[Health]:
        """Hooks on ``optimizer``'s steps, and on ``model``'s layers for the sampled steps only (a step that is
        not sampled runs without them), for the duration of the block; always removed."""
        import torch

        _, activations, _, _ = _kinds()
        if not self.slots:
            self.slots = [_Slot(name, module, span, bounded, isinstance(module, activations))
                          for name, module, span, bounded in watched_modules(model)]
            self.params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
            self._no_grad = [torch.full((), float("nan"), device=p.device) for _, p in self.params]
            self._copies = [torch.empty_like(p.detach()) for _, p in self.params]  # kept: no allocation per sample
        handles = []
        try:
            handles.append(optimizer.register_step_pre_hook(self._before_step))
            handles.append(optimizer.register_step_post_hook(self._after_step))
            self._watching = True
            self._layer_hooks(self.sampling)
            yield self
        finally:
            self._watching = False
            self._layer_hooks(False)
            for handle in handles:
                handle.remove()

    def _layer_hooks(self, on: bool) -> None:
        """The layers' forward hooks on (for a sampled step) or off."""
        if on and self.layers and not self._attached:
            self._attached = [slot.module.register_forward_hook(self._forward_hook(slot)) for slot in self.slots]
        elif not on:
            for handle in self._attached:
                handle.remove()
            self._attached = []

    def _forward_hook(self, slot: _Slot) -> Callable[..., None]:
        import torch

        low, high = slot.span
        middle, near = (low + high) / 2, (high - low) / 2 * 0.98  # within 1 % of the range from a bound
        scale = self.bins / (high - low)
        offset = -low * scale
        _, _, _, never_negative = _kinds()
        positive = isinstance(slot.module, never_negative)

        def hook(module: Any, inputs: Any, output: Any) -> None:
            # the training's own forward passes: not an evaluation (eval mode or no autograd) or a stage's
            if not self.sampling or not module.training or not torch.is_grad_enabled():
                return
            if not isinstance(output, torch.Tensor) or not output.is_floating_point() or output.numel() == 0:
                return
            # taken now, before an in-place activation that follows can change the tensor; a few operations
            # whatever the layer's size, none waiting for the device
            out = output.detach()
            out = out if out.dtype == torch.float32 else out.float()
            flat = out.reshape(-1)
            slot.moments.append((flat.sum(), torch.dot(flat, flat)))  # Σx, Σx²: a tenth of var_mean's time
            # the histogram as bin numbers added up (a third of histc's time on a CPU, and no wait on a GPU);
            # values beyond the range in the end bins, a NaN in the first
            position, bins = self._buffers(flat)
            torch.mul(flat, scale, out=position).add_(offset).nan_to_num_(0.0).clamp_(0, self.bins - 1)
            bins.copy_(position)  # to whole bin numbers, in a kept buffer (a large new one costs page faults)
            slot.hists.append(flat.new_zeros(self.bins).scatter_add_(0, bins, self._ones(flat)))
            if slot.bounded:
                slot.saturated.append(out.sub(middle).abs_().ge_(near).sum())
            if slot.activation:  # a unit is alive when some example's output is not 0: its largest |output|
                unit = _unit_dim(module, out) % out.dim()
                magnitude = out if positive else out.abs()
                alive = magnitude.amax(dim=[d for d in range(out.dim()) if d != unit]).ne(0)
                if slot.alive is None or slot.alive.shape != alive.shape:
                    slot.alive = alive
                else:
                    slot.alive |= alive
            slot.counts.append(out.numel())
            slot.steps.append(self.step)

        return hook

    def _buffers(self, like: Any) -> tuple[Any, Any]:
        """A float and an int64 buffer of ``len(like)`` on its device (kept and grown)."""
        import torch

        kept = self._scratch.get(like.device)
        if kept is None or len(kept[0]) < len(like):
            size = max(len(like), 1024)
            kept = self._scratch[like.device] = (like.new_empty(size), torch.empty(size, dtype=torch.int64,
                                                                                   device=like.device))
        return kept[0][: len(like)], kept[1][: len(like)]

    def _ones(self, like: Any) -> Any:
        """``len(like)`` ones on its device (kept and grown, not made anew at every call)."""
        ones = self._ones_kept.get(like.device)
        if ones is None or len(ones) < len(like):
            ones = self._ones_kept[like.device] = like.new_ones(max(len(like), 1024))
        return ones[: len(like)]

    def _before_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        import torch

        if self.sampling and self.params:
            torch._foreach_copy_(self._copies, [p.detach() for _, p in self.params])
            self._before = self._copies

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        import torch

        if self.sampling and self._before is not None:
            # the gradients are still there after the step (the next zero_grad clears them); torch's own
            # multi-tensor operations (as the optimisers and clip_grad_norm_ use): a few calls for all the
            # parameters together, the update taken in the copies' place
            weights = [p.detach() for _, p in self.params]
            grads = [p.grad.detach() if p.grad is not None else nan
                     for (_, p), nan in zip(self.params, self._no_grad, strict=True)]
            torch._foreach_sub_(self._before, weights)
            self.param_rows.append((torch._foreach_norm(grads), torch._foreach_norm(self._before),
                                    torch._foreach_norm(weights)))
            self.param_steps.append(self.step)
            self._before = None
        self.step += 1
        self.sampling = self.step % self.every == 0
        self._layer_hooks(self.sampling and self._watching)

    # -- the epoch ------------------------------------------------------------------------------------
    def start_epoch(self) -> None:
        for slot in self.slots:
            slot.clear()
        self.param_rows, self.param_steps = [], []
        self.step, self.sampling, self._before = 0, True, None
        self._layer_hooks(self._watching)

    def end_epoch(self, epoch: int, total: Callable[[Any], Any] | None = None, keep: bool = True) -> EpochHealth | None:
        """The epoch's numbers on the host (None when no step was sampled). ``total``: a sum over processes
        (torchrun) — a collective, so every process calls this; ``keep``: add them to :attr:`history`."""
        import torch

        steps = self.param_steps
        slots = [s for s in self.slots if s.counts]
        if not steps and not slots:
            return None
        # what the processes' shares add up to, as one tensor moved once: per module its calls' outputs, Σx and Σx²,
        # outputs saturated (bounded modules), histograms, and its units' "alive" (activation modules)
        parts = []
        for slot in slots:
            values = torch.stack([value for pair in slot.moments for value in pair])
            parts.append(torch.tensor(slot.counts, dtype=values.dtype, device=values.device))
            parts.append(values)
            if slot.bounded:
                parts.append(torch.stack(slot.saturated).float())
            parts.append(torch.cat(slot.hists))
            if slot.alive is not None:
                parts.append(slot.alive.float())
        flat = torch.cat(parts) if parts else torch.zeros(0)
        if total is not None:
            flat = total(flat)
        flat = flat.double().cpu().numpy()
        sampled = sorted(set(steps) | {t for s in slots for t in s.steps})
        where = {t: i for i, t in enumerate(sampled)}
        M, S = len(slots), len(sampled)
        sums, saturated_sum = np.zeros((M, S, 2)), np.zeros((M, S))
        count, hist = np.zeros((M, S)), np.zeros((M, S, self.bins), dtype=np.float32)
        dead, units = np.zeros(M), np.zeros(M, dtype=np.int64)
        at = 0

        def take(n: int) -> np.ndarray:
            nonlocal at
            at += n
            return flat[at - n: at]

        def add(into: np.ndarray, rows: list[int], values: np.ndarray) -> None:
            if rows == list(range(S)):  # once in every sampled step, in order: as they are
                into += values
            else:  # a module called twice in a step (both calls add up), or in some steps only
                np.add.at(into, rows, values)

        for m, slot in enumerate(slots):
            calls = len(slot.counts)
            rows = [where[t] for t in slot.steps]
            add(count[m], rows, take(calls))
            add(sums[m], rows, take(2 * calls).reshape(calls, 2))
            if slot.bounded:
                add(saturated_sum[m], rows, take(calls))
            add(hist[m], rows, take(calls * self.bins).reshape(calls, self.bins))
            if slot.alive is not None:
                alive = take(len(slot.alive))
                units[m], dead[m] = len(alive), float((alive == 0).mean())
            else:
                units[m] = slot.module.weight.shape[0] if hasattr(slot.module, "weight") else 0
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = sums[..., 0] / count
            std = np.sqrt(np.maximum(sums[..., 1] / count - mean ** 2, 0.0))
            saturated = np.where(count > 0, saturated_sum / count, 0.0)
        grid = np.full((S, len(self.params), 3), np.nan)
        if self.param_rows:
            norms = torch.stack([n for row in self.param_rows for kind in row for n in kind])
            grid[[where[t] for t in steps]] = norms.double().cpu().numpy().reshape(len(steps), 3, -1).transpose(0, 2, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            update = grid[:, :, 1] / grid[:, :, 2]
        total_steps = max(self.step, 1)
        out = EpochHealth(
            epoch=epoch, times=np.array([epoch - 1 + (t + 1) / total_steps for t in sampled]),
            modules=[s.name for s in slots], kinds=[type(s.module).__name__ for s in slots],
            ranges=np.array([s.span for s in slots], dtype=np.float64).reshape(M, 2),
            bounded=np.array([s.bounded for s in slots], dtype=bool), units=units, dead=dead, mean=mean, std=std,
            saturated=saturated, hist=hist, params=[name for name, _ in self.params], grad=grid[:, :, 0],
            update=update, norm=grid[:, :, 2], shapes=[list(p.shape) for _, p in self.params])
        if keep:
            self.add(out)
        return out

    def add(self, epoch: EpochHealth) -> None:
        self.history = [e for e in self.history if e.epoch < epoch.epoch] + [epoch]

    def until(self, epoch: int) -> list[EpochHealth]:
        return [e for e in self.history if e.epoch <= epoch]

    def load(self, run: Path | str, through: int) -> list[int]:
        """Take the epochs ``1 … through`` that ``run`` recorded (a resumed run goes on from them)."""
        loaded = load_health(run, through)
        for epoch in loaded:
            self.add(epoch)
        return [e.epoch for e in loaded]


def load_health(run: Path | str, through: int | None = None) -> list[EpochHealth]:
    """The layers' health ``run`` recorded per epoch (epochs ≤ ``through``), read without pickle."""
    from .training import parts

    return [EpochHealth.from_record(epoch, data) for epoch, data in parts(run, PART, through)]


class Recorded:
    """A run's recorded health read back (``interp analyze``): what the stage reads of a :class:`Health`."""

    def __init__(self, history: list[EpochHealth]):
        self.history = history

    def until(self, epoch: int) -> list[EpochHealth]:
        return [e for e in self.history if e.epoch <= epoch]


def read_health(run: Path | str, through: int | None = None) -> Recorded | None:
    loaded = load_health(run, through)
    return Recorded(loaded) if loaded else None


# -- diagnoses ---------------------------------------------------------------------------------------------


@dataclass
class Finding:
    rule: str
    layer: str
    epochs: list[int]
    evidence: str
    suggestion: str


def epochs_text(epochs: list[int]) -> str:
    """[1, 2, 3, 5] → '1–3, 5'."""
    runs: list[list[int]] = []
    for e in epochs:
        if runs and e == runs[-1][-1] + 1:
            runs[-1].append(e)
        else:
            runs.append([e])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}–{r[-1]}" for r in runs)


def weight_tensors(epoch: EpochHealth) -> list[int]:
    """The parameters that are weights of a layer (two or more dimensions), in the model's order."""
    return [i for i, shape in enumerate(epoch.shapes) if len(shape) >= 2]


def diagnose(history: Iterable[EpochHealth]) -> list[Finding]:
    """Each rule on each layer: a finding when it held in the latest epoch and in at least half of the epochs
    so far (so neither a first epoch's transient nor a problem that has passed makes one)."""
    epochs = list(history)
    if not epochs:
        return []
    held: dict[tuple[str, str], list[tuple[int, str]]] = {}
    suggestions: dict[str, str] = {}

    def hold(rule: str, layer: str, epoch: int, evidence: str, suggestion: str) -> None:
        held.setdefault((rule, layer), []).append((epoch, evidence))
        suggestions[rule + layer] = suggestion

    for e in epochs:
        for m, name in enumerate(e.modules):
            if e.kinds[m] in ("Linear", "Bilinear") or e.kinds[m].startswith(("Conv",)):
                continue  # a layer's own outputs are pre-activations: its activation module is judged
            if e.dead[m] > DEAD:
                hold("dead units", name, e.epoch, f"{e.dead[m]:.0%} of {e.units[m]} units never active",
                     "a lower learning rate; LeakyReLU or GELU; a normalization layer before it")
            if e.bounded[m] and np.nanmean(e.saturated[m]) > SATURATED:
                hold("saturation", name, e.epoch, f"{np.nanmean(e.saturated[m]):.0%} of outputs within 1% of the bounds",
                     "normalized inputs, a smaller initialization, a ReLU-family activation")
        weights = weight_tensors(e)
        if len(weights) >= 2:
            grad = np.nanmean(e.grad[:, weights], axis=0)
            last = grad[-1]
            for i, p in enumerate(weights[:-1]):
                if not (np.isfinite(grad[i]) and np.isfinite(last) and last > 0):
                    continue
                ratio = grad[i] / last
                if ratio < VANISHING:
                    hold("vanishing gradients", e.params[p], e.epoch,
                         f"gradient norm {grad[i]:.1e}, {ratio:.0e}× the last layer's",
                         "ReLU-family activations, normalization layers or residual connections")
                elif ratio > EXPLODING:
                    hold("exploding gradients", e.params[p], e.epoch,
                         f"gradient norm {grad[i]:.1e}, {ratio:.0e}× the last layer's",
                         "gradient clipping (clip_grad_norm_), a lower learning rate, normalization layers")
        for p in weights:
            ratios = e.update[:, p]
            ratios = ratios[np.isfinite(ratios)]
            if not len(ratios):
                continue
            median = float(np.median(ratios))
            if median > UPDATE_HIGH:
                hold("update ratio high", e.params[p], e.epoch, f"‖Δw‖/‖w‖ {median:.1e} per step",
                     "the learning rate may be too high for this layer")
            elif median < UPDATE_LOW:
                hold("update ratio low", e.params[p], e.epoch, f"‖Δw‖/‖w‖ {median:.1e} per step",
                     "the learning rate may be too low for this layer")
    findings = []
    for (rule, layer), seen in held.items():
        if 2 * len(seen) < len(epochs) or seen[-1][0] != epochs[-1].epoch:
            continue
        findings.append(Finding(rule, layer, [e for e, _ in seen], f"epoch {seen[-1][0]}: {seen[-1][1]}",
                                suggestions[rule + layer]))
    order = ["dead units", "saturation", "vanishing gradients", "exploding gradients", "update ratio high",
             "update ratio low"]
    return sorted(findings, key=lambda f: order.index(f.rule))
