"""Model registry: ``mlp`` and ``allconv``, plus your own factories by import path.

Every model returns logits from ``forward`` and ``(logits, features)`` from ``forward_features``, where
``features`` is the penultimate representation, computed in the same pass. Layers that stages talk
about are named: ``features.fc1`` … for the MLP, ``features.conv1`` … for the all-conv net; stages
accept the short name (``fc1``, ``conv3``) too.
"""

from __future__ import annotations

import contextlib
import importlib
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .errors import UserError

__all__ = ["MODELS", "AllConv", "MLP", "build_model", "capture_activations", "register_model", "resolve_layer"]

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
    """Build ``cfg.arch`` for inputs of ``input_shape`` (without the batch) and ``num_outputs`` outputs."""
    factory = MODELS.get(cfg.arch)
    if factory is None and ":" in cfg.arch:
        module_name, _, attr = cfg.arch.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise UserError(f"model.arch {cfg.arch!r}: cannot import it ({exc})") from None
    if factory is None:
        raise UserError(f"model.arch: unknown model {cfg.arch!r} (known: {', '.join(sorted(MODELS))}, "
                        "or package.module:factory)")
    model = factory(cfg, tuple(input_shape), num_outputs)
    if not hasattr(model, "forward_features"):
        raise UserError(f"model.arch {cfg.arch!r}: the model needs a forward_features(x) → (logits, features) method")
    return model


def resolve_layer(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    """Find a submodule by its dotted name, or by a unique last component (``conv3`` for ``features.conv3``)."""
    modules = dict(model.named_modules())
    if name in modules and name:
        return name, modules[name]
    matches = [full for full in modules if full.rsplit(".", 1)[-1] == name]
    if len(matches) == 1:
        return matches[0], modules[matches[0]]
    named = [full for full in modules if full.count(".") == 1 and full.startswith("features.")]
    raise UserError(f"layer {name!r} is not in the model (its layers: {', '.join(named) or 'none named'})")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def first_weight_layer(model: nn.Module) -> nn.Linear | nn.Conv2d:
    """The first Linear or Conv2d layer (the one whose weights look at the input)."""
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Conv2d):
            return module
    raise ValueError("model has no Linear or Conv2d layer")


def last_conv_block(model: nn.Module) -> tuple[str, nn.Module] | None:
    """The last block with spatial output (for Grad-CAM); None for models without convolutions."""
    found: tuple[str, nn.Module] | None = None
    features = getattr(model, "features", None)
    if isinstance(features, nn.Sequential):
        for name, block in features.named_children():
            if any(isinstance(m, nn.Conv2d) for m in block.modules()):
                found = (f"features.{name}", block)
        return found
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            found = (name, module)
    return found


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
