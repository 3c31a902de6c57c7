"""Influence: which training examples made a prediction — TracIn (Pruthi et al. 2020) over the run's own
per-epoch checkpoints.

The influence of training example z on example z′ is the sum over checkpoints c of the learning rate η_c
times the dot product of their loss gradients. The fast variant (the default) takes the gradients of the
classifier's weights only: for a linear classifier on features a with logits W·a + b the gradient is the outer
product (softmax − one-hot) ⊗ a, so the dot product of two is (g·g′)(a·a′) — two small matrix products per
checkpoint, no per-example backward pass. The full variant takes every parameter's gradient (``torch.func``,
one per example) and needs the run's full snapshots (``analysis.snapshots``).

Raw scores favour training examples with large gradients — high loss, whatever they look like; the cosine
of the two gradients (Barshan et al. 2020's normalisation) favours training examples whose gradient points
the same way: look-alikes with the same label. Both are computed; the cosine is averaged over checkpoints
with the learning rates as weights (so it lies in [−1, 1]). Self-influence, η‖∇L(z)‖² summed, is the raw
score of an example on itself: high for examples the model keeps failing to fit (mislabelled ones).

What the run keeps (:func:`classifier_part`, in ``training/epoch_NNN.npz``): the classifier's weights and
bias after every epoch and the epoch's mean learning rate. Without full snapshots the features a are the
final model's, each checkpoint's classifier applied to them; with them (``checkpoints/epoch_NNN.pt``) each
checkpoint's own.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import UserError

__all__ = ["MAX_CLASSIFIER", "Checkpoint", "Influence", "classifier_part", "read_checkpoints", "snapshot_path",
           "tracin"]

MAX_CLASSIFIER = 2 ** 22  # classifier values kept per epoch (16 MB of float32); a larger one is not kept
PART = "classifier"


def snapshot_path(run: Path | str, epoch: int) -> Path:
    return Path(run) / "checkpoints" / f"epoch_{epoch:03d}.pt"


def classifier_part(model: nn.Module, lr: float, layer: str | None = None) -> dict[str, Any] | None:
    """The classifier's weights (K, D) and bias (K) as float32 arrays, its name and ``lr``: what influence's
    fast variant needs of an epoch (None: the layer is not a Linear or 1×1 conv, or is over
    :data:`MAX_CLASSIFIER` values)."""
    from ..models import features_layer

    name, module = features_layer(model, layer)
    if not (isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)
                                             and module.groups == 1)):
        return None  # its gradient is not an outer product of two vectors: nothing the fast variant can use
    own = dict(module.named_parameters(recurse=False))
    if own["weight"].numel() > MAX_CLASSIFIER:
        return None
    weight = own["weight"].detach().flatten(1).float()
    bias = own["bias"].detach().float() if "bias" in own else torch.zeros(len(weight), device=weight.device)
    # copies: on the CPU .numpy() would share the live parameters' memory
    return {"layer": name, "weight": weight.cpu().numpy().copy(), "bias": bias.cpu().numpy().copy(), "lr": float(lr)}


def classifier_lr(model: nn.Module, optimizer: torch.optim.Optimizer, layer: str | None = None) -> float:
    """The learning rate of the optimiser's parameter group that holds the classifier's weight (the first
    group's when none does)."""
    from ..models import features_layer

    weight = getattr(features_layer(model, layer)[1], "weight", None)
    for group in optimizer.param_groups:
        if any(p is weight for p in group["params"]):
            return float(group["lr"])
    return float(optimizer.param_groups[0]["lr"])


@dataclass
class Checkpoint:
    """One epoch's classifier (``weight`` (K, D), ``bias`` (K)), learning rate, and full snapshot if kept."""

    epoch: int
    lr: float
    layer: str
    weight: Tensor
    bias: Tensor
    snapshot: Path | None = None

    @classmethod
    def of(cls, epoch: int, part: dict[str, Any], snapshot: Path | None = None) -> Checkpoint:
        """From what :func:`classifier_part` gave (or a training record holds) for ``epoch``."""
        return cls(epoch, float(part["lr"]), str(part["layer"]),
                   torch.as_tensor(np.asarray(part["weight"], dtype=np.float32)),
                   torch.as_tensor(np.asarray(part["bias"], dtype=np.float32)), snapshot)


def read_checkpoints(run: Path | str, through: int | None = None) -> list[Checkpoint]:
    """The epochs (1 … ``through``) whose classifier the run kept, in order, with their snapshots where kept."""
    from .training import parts

    found = []
    for epoch, fields in parts(run, PART, through):
        if epoch < 1:
            continue
        snapshot = snapshot_path(run, epoch)
        found.append(Checkpoint.of(epoch, fields, snapshot if snapshot.is_file() else None))
    return found


@dataclass
class Influence:
    """Scores of every training example (columns) on each query (rows): ``raw`` (TracIn) and ``cosine`` (q,
    n); ``self_influence`` (n,); the ``epochs`` used, the ``variant`` and where the features came from."""

    raw: np.ndarray
    cosine: np.ndarray
    self_influence: np.ndarray
    epochs: list[int]
    variant: str
    features: str
    seconds: float = 0.0

    def scores(self, score: str) -> np.ndarray:
        return self.cosine if score == "cosine" else self.raw


@contextlib.contextmanager
def _inputs_of(module: nn.Module) -> Iterator[list[Tensor]]:
    """The inputs of ``module`` as (B, D): a Linear's flattened, a 1×1 conv's averaged over positions."""
    caught: list[Tensor] = []

    def hook(_module: nn.Module, inputs: tuple[Any, ...]) -> None:
        x = inputs[0].detach()
        caught.append(x.float().mean(dim=(2, 3)) if isinstance(module, nn.Conv2d) else x.float().flatten(1))

    handle = module.register_forward_pre_hook(hook)
    try:
        yield caught
    finally:
        handle.remove()


def _features(model: nn.Module, module: nn.Module, x: Tensor, normalize: Callable[[Tensor], Tensor],
              batch_size: int) -> tuple[Tensor, Tensor]:
    """The classifier's inputs (N, D) and the model's logits (N, K) for ``x``, in batches, eval mode."""
    from ..models import logits_of

    features, logits = [], []
    with torch.no_grad(), _inputs_of(module) as caught:
        for start in range(0, len(x), batch_size):
            logits.append(logits_of(model(normalize(x[start:start + batch_size]))).float())
            features.append(caught.pop())
    if not features:  # no examples: (0, D) and (0, K)
        weight = dict(module.named_parameters(recurse=False))["weight"]
        return torch.zeros(0, weight.shape[1], device=x.device), torch.zeros(0, weight.shape[0], device=x.device)
    return torch.cat(features), torch.cat(logits)


def _trained(model: nn.Module) -> nn.Module:
    """The model trained, inside the one evaluated (a :class:`interp.models.LogitsOnly` wraps a model whose
    forward returns more than the logits): its layer names and snapshots are the trained model's."""
    from ..models import LogitsOnly

    return model.model if isinstance(model, LogitsOnly) else model


def _check_linear(features: Tensor, logits: Tensor, weight: Tensor, bias: Tensor, layer: str) -> None:
    """The fast variant holds when the logits are the classifier's output: W·a + b."""
    fits = features.dim() == 2 and features.shape[1] == weight.shape[1] and logits.shape[1:] == weight.shape[:1]
    again = features @ weight.T + bias if fits else None
    if again is None or not torch.allclose(again, logits, rtol=1e-3,
                                           atol=1e-3 * float(logits.abs().max().clamp(min=1))):
        raise UserError(f"influence: the model's logits are not the output of its classifier {layer} (a Linear, or "
                        "a 1×1 conv on pooled features): its fast variant does not apply; set the stage's variant "
                        "to full (with analysis.snapshots: true) or name the layer in analysis.features_layer")


def _residual(features: Tensor, weight: Tensor, bias: Tensor, labels: Tensor) -> Tensor:
    """∂loss/∂logits of cross-entropy per example: softmax − one-hot (N, K)."""
    g = torch.softmax(features @ weight.T + bias, dim=1)
    g[torch.arange(len(labels), device=labels.device), labels] -= 1
    return g


def tracin(model: nn.Module, data: Any, queries: Tensor, checkpoints: list[Checkpoint], *,
           variant: str = "fast", batch_size: int = 1000, advance: Callable[[int], None] | None = None,
           notice: Callable[[str], None] | None = None) -> Influence:
    """TracIn of every training example of ``data`` on the evaluation examples ``queries`` (indices), over
    ``checkpoints``. ``model`` is the final model (its weights and modes are left as they were); ``variant``
    ``fast`` (the classifier's gradients) or ``full`` (every parameter's; needs each checkpoint's snapshot).
    ``advance`` counts training examples × checkpoints."""
    import copy

    from ..checkpoint import load_checkpoint
    from ..models import resolve_layer

    if not checkpoints:
        raise UserError("influence: the run kept no per-epoch classifier weights (training/epoch_NNN.npz); a "
                        "run trained with this version of interp keeps them")
    started = time.perf_counter()
    device = data.train_x.device
    query_x, query_y = data.eval_x[queries], data.eval_y[queries].to(device).long()
    n = len(data.train_x)
    snapshots = all(c.snapshot is not None for c in checkpoints)
    if variant == "full" and not snapshots:
        raise UserError("influence: the full variant needs a snapshot of the model after every epoch; train with "
                        "analysis.snapshots: true (the fast variant needs only what every run keeps)")
    modes = {m: m.training for m in model.modules()}  # as they were, each (a frozen batch norm stays frozen)
    work = copy.deepcopy(model).eval() if snapshots else model.eval()
    trained = _trained(work)  # what the snapshots hold the weights of
    scores = _Scores(len(queries), n, device)
    step = advance or (lambda count: None)
    try:
        if variant == "full":
            _full(work, data, query_x, query_y, checkpoints, scores, batch_size, step, notice)
        else:
            module = resolve_layer(trained, checkpoints[-1].layer)[1]
            inputs = None
            for c in checkpoints:
                if snapshots:  # each checkpoint's own features; else the final model's, taken once
                    trained.load_state_dict(load_checkpoint(c.snapshot, device)["model"])  # type: ignore[arg-type]
                if snapshots or inputs is None:
                    inputs = _classifier_inputs(work, module, data, query_x, c if snapshots else checkpoints[-1],
                                                batch_size)
                train_a, query_a = inputs
                weight, bias = c.weight.to(device), c.bias.to(device)
                query_g = _residual(query_a, weight, bias, query_y)
                query_norm = query_g.norm(dim=1) * query_a.norm(dim=1)
                for begin in range(0, n, batch_size):
                    a = train_a[begin:begin + batch_size]
                    g = _residual(a, weight, bias, data.train_y[begin:begin + len(a)].long())
                    scores.add(begin, c.lr, (query_g @ g.T) * (query_a @ a.T), query_norm,
                               g.norm(dim=1) * a.norm(dim=1))
                    step(len(a))
    finally:
        for m, mode in modes.items():
            m.training = mode
    features = "each checkpoint's snapshot" if snapshots else "the final model, each epoch's classifier on them"
    raw, cosine, self_influence = scores.result(sum(c.lr for c in checkpoints))
    return Influence(raw, cosine, self_influence, [c.epoch for c in checkpoints], variant, features,
                     time.perf_counter() - started)


def _classifier_inputs(model: nn.Module, module: nn.Module, data: Any, query_x: Tensor, checkpoint: Checkpoint,
                       batch_size: int) -> tuple[Tensor, Tensor]:
    """The classifier's inputs for the training set and the queries, once the logits are checked to be
    ``checkpoint``'s classifier on them."""
    train_a, logits = _features(model, module, data.train_x, data.normalize, batch_size)
    device = train_a.device
    _check_linear(train_a[:256], logits[:256], checkpoint.weight.to(device), checkpoint.bias.to(device),
                  checkpoint.layer)
    return train_a, _features(model, module, query_x, data.normalize, batch_size)[0]


class _Scores:
    """Raw TracIn, the η-weighted cosine and self-influence, summed batch by batch over checkpoints."""

    def __init__(self, queries: int, n: int, device: torch.device):
        self.raw = torch.zeros(queries, n, device=device)
        self.cosine = torch.zeros(queries, n, device=device)
        self.self_influence = torch.zeros(n, device=device)

    def add(self, begin: int, lr: float, dot: Tensor, query_norm: Tensor, norm: Tensor) -> None:
        """A batch of training examples from ``begin``: ``dot`` (q, B) of their gradients with the queries',
        the gradients' norms (q,) and (B,)."""
        end = begin + len(norm)
        self.raw[:, begin:end] += lr * dot
        self.cosine[:, begin:end] += lr * dot / (query_norm[:, None] * norm[None, :]).clamp(min=1e-30)
        self.self_influence[begin:end] += lr * norm ** 2

    def result(self, total_lr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return (self.raw.cpu().numpy(), (self.cosine / max(total_lr, 1e-30)).cpu().numpy(),
                self.self_influence.cpu().numpy())


def _full(model: nn.Module, data: Any, query_x: Tensor, query_y: Tensor, checkpoints: list[Checkpoint],
          scores: _Scores, batch_size: int, step: Callable[[int], None], notice: Callable[[str], None] | None) -> None:
    """Every parameter's per-example gradient at each checkpoint (torch.func), dotted with the queries'."""
    from torch.func import functional_call, grad, vmap

    from ..checkpoint import load_checkpoint
    from ..models import logits_of

    device = data.train_x.device
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    size = sum(p.numel() for p in trainable.values())
    batch = max(1, min(batch_size, 2 ** 26 // max(size, 1)))  # the batch's gradients within 256 MB
    n = len(data.train_x)
    if len(query_x) * size > 2 ** 28:
        raise UserError(f"influence (full gradients): {len(query_x)} images × {size:,} parameters of gradients "
                        "is over 1 GB; lower the stage's queries (or use the fast variant)")

    def gradients(params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        def loss(p: dict[str, Tensor], one: Tensor, label: Tensor) -> Tensor:
            out = logits_of(functional_call(model, ({**p}, buffers), (one[None],)))
            return nn.functional.cross_entropy(out.float(), label[None], reduction="sum")

        per = vmap(grad(loss), in_dims=(None, 0, 0))(params, data.normalize(x), y)
        return torch.cat([per[k].flatten(1) for k in trainable], dim=1)  # (B, P)

    timed = False
    for c in checkpoints:
        assert c.snapshot is not None
        _trained(model).load_state_dict(load_checkpoint(c.snapshot, device)["model"])
        params = {k: p.detach() for k, p in model.named_parameters() if k in trainable}
        buffers = {k: b.detach() for k, b in model.named_buffers()}
        query = torch.cat([gradients(params, buffers, query_x[s:s + batch], query_y[s:s + batch])
                           for s in range(0, len(query_x), batch)])
        query_norm = query.norm(dim=1)
        for start in range(0, n, batch):
            began = time.perf_counter()
            g = gradients(params, buffers, data.train_x[start:start + batch], data.train_y[start:start + batch].long())
            scores.add(start, c.lr, query @ g.T, query_norm, g.norm(dim=1))
            step(len(g))
            if not timed and notice is not None:
                timed = True
                seconds = (time.perf_counter() - began) * (n / len(g)) * len(checkpoints)
                notice(f"influence (full gradients): {len(checkpoints)} checkpoints × {n:,} training examples × "
                       f"{size:,} parameters, about {seconds:.0f} s (timed on the first batch of {len(g)})")

