"""Model registry: ``mlp`` and ``allconv``, torchvision architectures, and your own factories by import path.

A model's forward returns logits (or a tuple with the logits first, or a dict with ``logits``). The
penultimate features are read by a forward hook on the classifier (see
:func:`features_layer`); ``forward_features`` is not needed. Layers that stages talk
about are named: ``features.fc1`` … for the MLP, ``features.conv1`` … for the all-conv net; stages
accept the short name (``fc1``, ``conv3``) too.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .errors import UserError
from .imports import one_line

__all__ = ["MODELS", "AllConv", "LogitsOnly", "MLP", "build_model", "capture_activations", "check_model",
           "features_layer", "last_spatial_layer", "logits_model", "logits_of", "register_model", "resolve_layer",
           "torchvision_model"]

Factory = Callable[[ModelConfig, tuple[int, ...], int], nn.Module]
MODELS: dict[str, Factory] = {}

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "elu": nn.ELU}


def register_model(name: str) -> Callable[[Factory], Factory]:
    """Decorator: make ``factory(cfg, input_shape, num_outputs)`` available as ``model.arch: name``."""

    def add(factory: Factory) -> Factory:
        MODELS[name] = factory
        return factory

    return add


class MLP(nn.Module):
    """Flatten → (Linear → activation) per hidden size → Linear to the outputs."""

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, hidden: list[int], activation: str = "relu"):
        super().__init__()
        self.input_shape = tuple(input_shape)
        width = math.prod(input_shape)
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        for i, size in enumerate(hidden, start=1):
            blocks[f"fc{i}"] = nn.Sequential(nn.Linear(width, size), _ACTIVATIONS[activation]())
            width = size
        self.features = nn.Sequential(blocks)
        self.head = nn.Linear(width, num_outputs)

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.features(x.flatten(1))  # (B, last hidden size)
        return self.head(features), features

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[0]


class AllConv(nn.Module):
    """All-CNN-C (Springenberg et al. 2014): 3×3 convs, stride-2 convs instead of pooling, 1×1 convs,
    global average pooling, no dense layers.

    The classifier is the paper's 1×1 conv to the classes; since it is linear it commutes with global
    average pooling, so it is applied to the pooled features — the same logits, and the pooled
    features are the penultimate representation.
    """

    def __init__(self, input_shape: tuple[int, ...], num_outputs: int, width: int = 96, batchnorm: bool = True):
        super().__init__()
        channels = input_shape[0]
        w1, w2 = width, 2 * width
        plan = [  # (out channels, kernel, stride, padding)
            (w1, 3, 1, 1), (w1, 3, 1, 1), (w1, 3, 2, 1),
            (w2, 3, 1, 1), (w2, 3, 1, 1), (w2, 3, 2, 1),
            (w2, 3, 1, 0), (w2, 1, 1, 0),
        ]
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        for i, (out, kernel, stride, padding) in enumerate(plan, start=1):
            layers: list[nn.Module] = [nn.Conv2d(channels, out, kernel, stride, padding, bias=not batchnorm)]
            if batchnorm:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.ReLU())
            blocks[f"conv{i}"] = nn.Sequential(*layers)
            channels = out
        self.features = nn.Sequential(blocks)
        self.classifier = nn.Conv2d(channels, num_outputs, 1)

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        maps = self.features(x)  # (B, 2·width, h, w)
        pooled = maps.mean(dim=(2, 3))  # (B, 2·width)
        logits = self.classifier(pooled[:, :, None, None]).flatten(1)
        return logits, pooled

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[0]


@register_model("mlp")
def _mlp(cfg: ModelConfig, input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    return MLP(input_shape, num_outputs, list(cfg.hidden), cfg.activation)


@register_model("allconv")
def _allconv(cfg: ModelConfig, input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    if len(input_shape) != 3:
        raise UserError(f"model.arch allconv needs images, but this dataset's inputs have shape {input_shape}")
    return AllConv(input_shape, num_outputs, cfg.width, cfg.batchnorm)


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """Build ``cfg.arch`` for inputs of ``input_shape`` (without the batch) and ``num_outputs`` outputs:
    a registered name, ``torchvision:NAME`` or ``package.module:factory``."""
    factory = MODELS.get(cfg.arch)
    if factory is not None:
        return factory(cfg, tuple(input_shape), num_outputs)
    kind, sep, attr = cfg.arch.partition(":")
    if not sep:
        raise UserError(f"model.arch: unknown model {cfg.arch!r} (known: {', '.join(sorted(MODELS))}, "
                        "torchvision:NAME, or package.module:factory)")
    if kind == "torchvision":
        return torchvision_model(attr, tuple(input_shape), num_outputs, dict(cfg.args))
    return _call_factory(cfg.arch, tuple(input_shape), num_outputs, dict(cfg.args))


def _call_factory(path: str, input_shape: tuple[int, ...], num_outputs: int, args: dict[str, Any]) -> nn.Module:
    """Call the factory with the keywords its signature accepts among ``num_classes``, ``in_channels`` and
    ``input_shape``, plus ``model.args``."""
    from .imports import call, import_path

    offered: dict[str, Any] = {"num_classes": num_outputs, "input_shape": input_shape}
    if len(input_shape) == 3:
        offered["in_channels"] = input_shape[0]
    model = call(path, "model.arch", import_path(path, "model.arch"), offered, args)
    if not isinstance(model, nn.Module):
        raise UserError(f"model.arch {path!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def torchvision_model(name: str, input_shape: tuple[int, ...], num_outputs: int,
                      args: dict[str, Any] | None = None) -> nn.Module:
    """A torchvision classification architecture with random weights (nothing is downloaded),
    ``num_classes`` outputs, and its first convolution adapted to the input's channels."""
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        close = [k for k in known if k.startswith(name[:3])][:6] or known[:6]
        raise UserError(f"model.arch torchvision:{name}: not a torchvision classification model "
                        f"(e.g. {', '.join(close)})")
    if len(input_shape) != 3:
        raise UserError(f"model.arch torchvision:{name} needs images, but this dataset's inputs have shape "
                        f"{input_shape}")
    try:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_outputs, **(args or {}))
    except Exception as exc:
        raise UserError(f"model.arch torchvision:{name}: {type(exc).__name__}: {one_line(exc)}") from None
    _adapt_first_conv(model, input_shape[0])
    return model


def _adapt_first_conv(model: nn.Module, channels: int) -> None:
    """Replace the first Conv2d by one taking ``channels`` input channels (same shape otherwise)."""
    for full, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == channels:
                return
            replacement = nn.Conv2d(channels, module.out_channels, module.kernel_size, module.stride,  # type: ignore[arg-type]
                                    module.padding, module.dilation, module.groups,  # type: ignore[arg-type]
                                    bias=module.bias is not None, padding_mode=module.padding_mode)
            parent_name, _, child = full.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, replacement)
            return


def check_model(model: nn.Module, arch: str, example: Tensor, num_outputs: int) -> None:
    """One forward of ``example`` (a probe batch): the output must hold logits of shape (B, num_outputs)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(example)
    except Exception as exc:
        raise UserError(f"model.arch {arch!r}: the model failed on a batch of shape {tuple(example.shape)} "
                        f"({type(exc).__name__}: {one_line(exc)})") from None
    finally:
        model.train(was_training)
    try:
        logits = logits_of(output)
    except TypeError as exc:
        raise UserError(f"model.arch {arch!r}: {exc}") from None
    expected = (len(example), num_outputs)
    if tuple(logits.shape) != expected:
        raise UserError(f"model.arch {arch!r}: the model's output for a batch of {len(example)} has shape "
                        f"{tuple(logits.shape)}; expected {expected} (one logit per class)")


def resolve_layer(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    """Find a submodule by its dotted name, or by a unique last component (``conv3`` for ``features.conv3``)."""
    modules = dict(model.named_modules())
    if name in modules and name:
        return name, modules[name]
    matches = [full for full in modules if full.rsplit(".", 1)[-1] == name]
    if len(matches) == 1:
        return matches[0], modules[matches[0]]
    named = [full for full in modules if full.count(".") == 1 and full.startswith("features.")] or \
        [full for full in modules if full and "." not in full]
    shown = ", ".join(named[:16]) + (" …" if len(named) > 16 else "")
    raise UserError(f"layer {name!r} is not in the model (its layers: {shown or 'none named'})")


def logits_of(output: Any) -> Tensor:
    """The logits in what a model's forward returned: a tensor, the first item of a tuple or list, or
    ``output["logits"]``."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, tuple | list) and output and isinstance(output[0], Tensor):
        return output[0]
    if isinstance(output, dict) and isinstance(output.get("logits"), Tensor):
        return output["logits"]
    raise TypeError(f"the model returned {type(output).__name__}; expected logits: a tensor, a tuple with the "
                    "logits first, or a dict with 'logits'")


class LogitsOnly(nn.Module):
    """A model whose forward returns only the logits (for Captum, which wants a tensor out)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return logits_of(self.model(x))


def logits_model(model: nn.Module, example: Tensor) -> nn.Module:
    """``model`` itself if its forward returns a tensor, else the model wrapped in :class:`LogitsOnly`."""
    if isinstance(model, LogitsOnly):
        return model
    was_training = model.training
    model.eval()  # no batch-norm statistics are touched
    try:
        with torch.no_grad():
            output = model(example[:1])
    finally:
        model.train(was_training)
    return model if isinstance(output, Tensor) else LogitsOnly(model)


def features_layer(model: nn.Module, name: str | None = None) -> tuple[str, nn.Module]:
    """The layer whose *input* is the penultimate representation: ``name`` when given, else the last
    ``nn.Linear`` or 1×1 ``nn.Conv2d`` of the model (its classifier)."""
    if name:
        return resolve_layer(model, name)
    found = None
    for full, module in model.named_modules():
        if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)):
            found = (full, module)
    if found is None:
        raise UserError("analysis.features_layer: the model has no Linear or 1×1 conv classifier to take "
                        "features from; name the layer whose input is the penultimate representation")
    return found


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def first_weight_layer(model: nn.Module) -> nn.Linear | nn.Conv2d:
    """The first Linear or Conv2d layer (the one whose weights look at the input)."""
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            return module
    raise ValueError("model has no Linear or Conv2d layer")


def last_spatial_layer(model: nn.Module, example: Tensor | None = None) -> tuple[str, nn.Module] | None:
    """The last block with spatial output (for Grad-CAM); None for models without convolutions.

    Blocks are the children of ``model.features`` when it is a Sequential (``features.conv8``), else the
    model's own children (``layer4`` in a ResNet), looking through single-child wrappers; the last one
    holding a Conv2d is chosen. Given an ``example`` input, blocks whose output is only 1×1 for it (a
    ResNet's layer4 on 28×28 images) are passed over while an earlier block has a larger map."""
    prefix, root = "", model
    while len(children := list(root.named_children())) == 1 and not isinstance(children[0][1], nn.Conv2d):
        prefix, root = f"{prefix}{children[0][0]}.", children[0][1]
    features = getattr(root, "features", None)
    if isinstance(features, nn.Sequential):
        prefix, root = f"{prefix}features.", features
    candidates = [(f"{prefix}{name}", block) for name, block in root.named_children()
                  if any(isinstance(m, nn.Conv2d) for m in block.modules())]
    if example is not None and len(candidates) > 1:
        sizes: dict[str, int] = {}
        handles = [block.register_forward_hook(
            lambda _m, _i, out, key=name: sizes.__setitem__(key, out.shape[-2] * out.shape[-1])
            if isinstance(out, Tensor) and out.dim() == 4 else None) for name, block in candidates]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(example[:1])
        finally:
            model.train(was_training)
            for handle in handles:
                handle.remove()
        spatial = [c for c in candidates if sizes.get(c[0], 0) > 1]
        candidates = spatial or candidates
    return candidates[-1] if candidates else None


def feature_blocks(model: nn.Module) -> list[str]:
    """Names of the model's top-level feature blocks, in order (``features.fc1`` …)."""
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        return [f"features.{name}" for name, _ in features.named_children()]
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear | nn.Conv2d)]


@contextlib.contextmanager
def capture_activations(model: nn.Module, names: list[str]) -> Iterator[dict[str, Tensor]]:
    """Record the outputs of the named layers during forward passes inside the ``with`` block.

    The hooks are removed when the block ends, also when it ends with an exception."""
    outputs: dict[str, Tensor] = {}
    handles = []
    try:
        for name in names:
            full, module = resolve_layer(model, name)

            def hook(_module: nn.Module, _inputs: object, output: Tensor, key: str = full) -> None:
                outputs[key] = output.detach()

            handles.append(module.register_forward_hook(hook))
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 1000) -> Tensor:
    """Logits for ``x`` in batches, without gradients."""
    return torch.cat([model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
