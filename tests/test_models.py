from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import interp
from interp.config import ModelConfig
from interp.errors import UserError
from interp.models import MODELS, AllConv, build_model, resolve_layer

SHAPES = [(1, 28, 28), (3, 32, 32)]


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("shape", SHAPES, ids=["mnist", "cifar"])
def test_every_model_gives_logits_and_features_in_one_pass(arch: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, width=8, hidden=[16, 12]), shape, 10).eval()
    x = torch.randn(4, *shape)
    logits, features = model.forward_features(x)
    assert logits.shape == (4, 10)
    assert features.dim() == 2 and features.shape[0] == 4
    assert torch.allclose(model(x), logits)
    # the logits are an affine function of the penultimate features (nothing happens after them)
    head = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)][-1]
    weight = head.weight.reshape(head.weight.shape[0], -1)
    assert torch.allclose(features @ weight.T + head.bias, logits, atol=1e-5)


def test_mlp_hidden_sizes_and_activation() -> None:
    model = build_model(ModelConfig(arch="mlp", hidden=[256, 64], activation="tanh"), (1, 28, 28), 10)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 256), (256, 64), (64, 10)]
    assert sum(isinstance(m, nn.Tanh) for m in model.modules()) == 2
    assert model.forward_features(torch.zeros(2, 1, 28, 28))[1].shape == (2, 64)


@pytest.mark.parametrize("shape", SHAPES, ids=["mnist", "cifar"])
def test_allconv_is_all_convolutional(shape: tuple[int, ...]) -> None:
    model = AllConv(shape, 10, width=96)
    kinds = {type(m) for m in model.modules()}
    assert nn.Linear not in kinds and not any(issubclass(k, nn.modules.pooling._MaxPoolNd) for k in kinds)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [96, 96, 96, 192, 192, 192, 192, 192, 10]
    assert [c.stride[0] for c in convs].count(2) == 2  # downsampling by stride-2 convs
    assert [c.kernel_size[0] for c in convs][-2:] == [1, 1]  # 1×1 convs at the end
    assert model.forward_features(torch.zeros(2, *shape))[1].shape == (2, 192)


def test_unknown_arch_and_import_path() -> None:
    with pytest.raises(UserError, match="unknown model 'resnet'"):
        build_model(ModelConfig(arch="resnet"), (1, 28, 28), 10)
    with pytest.raises(UserError, match="cannot import"):
        build_model(ModelConfig(arch="no_such_pkg.models:net"), (1, 28, 28), 10)


def test_features_hook_finds_the_penultimate_representation() -> None:
    """The evaluation's forward hook on the classifier catches exactly what forward_features returns."""
    from interp.analysis.evaluation import _capture_input
    from interp.models import features_layer

    for arch in sorted(MODELS):
        torch.manual_seed(0)
        model = build_model(ModelConfig(arch=arch, width=8, hidden=[16, 12]), (1, 28, 28), 10).eval()
        x = torch.randn(5, 1, 28, 28)
        name, layer = features_layer(model)
        assert name in ("head", "classifier")
        with _capture_input(layer) as caught, torch.no_grad():
            model(x)
        assert torch.equal(caught[0], model.forward_features(x)[1])


def test_layers_resolve_by_short_name() -> None:
    model = AllConv((1, 28, 28), 10, width=4)
    assert resolve_layer(model, "conv3")[0] == "features.conv3"
    assert resolve_layer(model, "features.conv8")[0] == "features.conv8"
    with pytest.raises(UserError, match="features.conv1"):
        resolve_layer(model, "conv99")


def test_the_package_exports_are_typed_and_lazy() -> None:
    """Every name in interp.__all__ is imported under TYPE_CHECKING from the module that __getattr__ loads it
    from at run time (or imported outright), and resolves to that module's object — also once every submodule,
    ``interp.analyze`` among them, has been imported."""
    import ast
    import importlib
    from pathlib import Path

    import interp

    tree = ast.parse(Path(interp.__file__).read_text())
    guarded = next(node for node in tree.body if isinstance(node, ast.If) and getattr(node.test, "id", "") ==
                   "TYPE_CHECKING")
    typed = {alias.name: node.module for node in guarded.body if isinstance(node, ast.ImportFrom)
             for alias in node.names}
    eager = {alias.name: node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.level
             for alias in node.names}
    assert set(typed) == set(interp._LAZY) and set(typed) | set(eager) == set(interp.__all__)
    for name, module in {**typed, **eager}.items():
        assert module == interp._LAZY.get(name, module), name
        importlib.import_module("interp.analyze")  # the package attribute a submodule's import sets
        assert getattr(interp, name) is getattr(importlib.import_module(f"interp.{module}"), name), name


def test_no_module_of_interp_imports_itself_back() -> None:
    """The import graph of interp's modules (every import, at module level or inside a function; package
    __init__ files left out, as they only re-export) has no circle."""
    import ast

    root = Path(interp.__file__).parent
    modules = {".".join(("interp", *p.relative_to(root).with_suffix("").parts)).removesuffix(".__init__"): p
               for p in root.rglob("*.py")}
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                parts = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join([*parts[:len(parts) - node.level + 1], *([node.module] if node.module else [])]) \
                    if node.level else (node.module or "")
                found = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
                deps.update(found or [base])
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in modules and d not in packages and d != name}

    def reaches(start: str, goal: str) -> list[str] | None:
        paths, seen = [[start]], {start}
        while paths:
            path = paths.pop()
            for nxt in graph.get(path[-1], ()):
                if nxt == goal:
                    return [*path, nxt]
                if nxt not in seen:
                    seen.add(nxt)
                    paths.append([*path, nxt])
        return None

    circles = [reaches(name, name) for name in graph if name not in packages]
    assert [c for c in circles if c] == []
