"""The registry of attribution methods: every method against a direct call of its reference library (or a
known answer), a method of one's own by import path, the functional API, and Adebayo et al.'s finding that
Guided Backprop survives the re-initialization of the top layers."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from interp.attribution import DEFAULT_METHODS, METHODS, attribute, check_methods, method_class
from interp.cli import app
from interp.config import ModelConfig
from interp.errors import UserError
from interp.models import build_model

runner = CliRunner()


@pytest.fixture(scope="module")
def nets() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {"mlp": build_model(ModelConfig(arch="mlp", hidden=[32]), (1, 12, 12), 5).eval(),
            "allconv": build_model(ModelConfig(arch="allconv", width=4), (1, 12, 12), 5).eval()}


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(3, 1, 12, 12, generator=generator), torch.tensor([0, 3, 4])


def test_every_named_method_is_registered_with_a_colour_and_the_defaults_are_among_them() -> None:
    assert list(METHODS) == ["saliency", "smoothgrad", "input_x_gradient", "integrated_gradients",
                             "integrated_gradients_blur", "expected_gradients", "deeplift", "occlusion",
                             "guided_backprop", "gradcam", "guided_gradcam", "gradcam_plus_plus", "lrp"]
    assert set(DEFAULT_METHODS) <= set(METHODS)
    from matplotlib.colors import to_hex

    from interp.stages.trust import REFERENCE_COLOURS

    colours = [to_hex(c) for c in [cls.colour for cls in METHODS.values()] + list(REFERENCE_COLOURS.values())]
    assert len(set(colours)) == len(colours)  # told apart in every plot, from each other and the references


def _captum(name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The method computed by a direct call of Captum, the way its documentation shows."""
    import captum.attr as ca

    from interp.models import last_spatial_layer

    x = x.clone().requires_grad_(True)
    layer = last_spatial_layer(model, x)
    if name == "input_x_gradient":
        return ca.InputXGradient(model).attribute(x, target=y)
    if name == "deeplift":
        return ca.DeepLift(model).attribute(x, baselines=torch.zeros_like(x), target=y)
    if name == "occlusion":  # the default window of a 12-pixel image: 2, stride 1
        return ca.Occlusion(model).attribute(x, sliding_window_shapes=(1, 2, 2), strides=(1, 1, 1), target=y,
                                             baselines=0.0)
    if name == "guided_backprop":
        return ca.GuidedBackprop(model).attribute(x, target=y)
    if name == "guided_gradcam":
        return ca.GuidedGradCam(model, layer[1]).attribute(x, target=y, interpolate_mode="bilinear")
    if name == "gradcam":
        cam = ca.LayerGradCam(model, layer[1]).attribute(x, target=y, relu_attributions=True)
        return ca.LayerAttribution.interpolate(cam, x.shape[-2:], interpolate_mode="bilinear")
    if name == "lrp":
        import copy

        return ca.LRP(copy.deepcopy(model)).attribute(x, target=y)
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["input_x_gradient", "deeplift", "occlusion", "guided_backprop", "guided_gradcam",
                                  "gradcam", "lrp"])
@pytest.mark.parametrize("arch", ["mlp", "allconv"])
def test_each_method_equals_a_direct_captum_call(nets, batch, arch: str, name: str) -> None:
    model, (x, y) = nets[arch], batch
    method = method_class(name)()
    if method.skip_reason(model, x):
        assert arch == "mlp" and "conv" in method.needs  # only the CAMs need a conv layer here
        with pytest.raises(ValueError, match="convolutional"):
            attribute(name, model, x, y)
        return
    ours = attribute(name, model, x, y)
    reference = _captum(name, model, x, y).detach()
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


class BiasFree(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.relu, self.fc2 = nn.Linear(144, 16, bias=False), nn.ReLU(), nn.Linear(16, 5, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(x.flatten(1))))


def test_lrp_of_a_bias_free_relu_network_is_input_times_gradient(batch) -> None:
    """A known answer: with the ε rule (ε → 0) and no biases, relevance is conserved layer by layer and
    equals x · ∂f/∂x (Montavon et al. 2019, section 10.2)."""
    torch.manual_seed(2)
    model = BiasFree().eval()
    assert method_class("lrp")().skip_reason(nn.Sequential(nn.Flatten(), nn.Linear(144, 5))) == \
        "LRP's rules do not cover Flatten"
    x, y = batch
    relevance = attribute("lrp", model, x, y)
    x1 = x.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(x1).gather(1, y[:, None]).sum(), x1)
    torch.testing.assert_close(relevance, x * gradient, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(relevance.flatten(1).sum(1), model(x).gather(1, y[:, None])[:, 0], atol=1e-4, rtol=1e-4)


def test_gradcam_plus_plus_follows_the_papers_closed_form(nets, batch) -> None:
    """Grad-CAM++ computed here from the layer's activations and gradients (hooks and autograd, no Captum), by
    equation 19 of Chattopadhay et al. 2018 with exp(score): α = g² / (2g² + Σ A · g³), w = Σ α · relu(g)."""
    import torch.nn.functional as F

    from interp.models import last_spatial_layer

    model, (x, y) = nets["allconv"], batch
    _, layer = last_spatial_layer(model, x)
    kept = {}
    hook = layer.register_forward_hook(lambda m, i, out: kept.__setitem__("a", out))
    try:
        score = model(x).gather(1, y[:, None]).sum()
    finally:
        hook.remove()
    a = kept["a"]
    (g,) = torch.autograd.grad(score, a)
    a, g = a.detach().double(), g.double()
    alpha = g**2 / (2 * g**2 + a.sum(dim=(2, 3), keepdim=True) * g**3 + 1e-6)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    weights = (alpha * g.clamp(min=0)).sum(dim=(2, 3), keepdim=True)
    cam = F.interpolate((weights * a).sum(1, keepdim=True).clamp(min=0), size=x.shape[-2:], mode="bilinear",
                        align_corners=False)
    torch.testing.assert_close(attribute("gradcam_plus_plus", model, x, y).double(), cam, atol=1e-5, rtol=1e-4)


def test_occlusion_of_a_linear_model_is_the_logit_drop_of_each_patch(batch) -> None:
    """A known answer: for f(x) = w·x, occluding a window of the image with black lowers the logit by w·x over
    the window; Captum averages that over the windows covering each pixel."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 5)).eval()
    x, y = batch
    ours = attribute("occlusion", model, x, y, window=12, stride=12)  # one window: the whole image
    weights = model[1].weight.detach()[y].view_as(x)
    expected = (weights * x).flatten(1).sum(1)[:, None, None, None].expand_as(x)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_deeplift_and_lrp_say_why_they_skip_a_resnet() -> None:
    model = build_model(ModelConfig(arch="torchvision:resnet18"), (1, 28, 28), 10).eval()
    x = torch.randn(1, 1, 28, 28)
    for name in ("deeplift", "lrp"):
        reason = method_class(name)().skip_reason(model, x)
        assert reason == "needs every layer called once per forward pass; layer1.0.relu is called more than once"
    assert method_class("guided_backprop")().skip_reason(model, x) is None


def test_method_names_are_checked_in_one_line() -> None:
    assert check_methods(None) == DEFAULT_METHODS
    assert check_methods(["guided_backprop", "saliency"]) == ("guided_backprop", "saliency")
    for wrong, said in ((["salency"], "unknown method 'salency'"), (["saliency", "saliency"], "listed twice"),
                        ([], "non-empty list"), (["nowhere:Thing"], "cannot import module 'nowhere'")):
        with pytest.raises(UserError, match=re.escape(said)):
            check_methods(wrong, "analysis.methods")
    moved = runner.invoke(app, ["train", "--set", "analysis.stages=[{trust: {methods: [saliency]}}]"])
    assert moved.exit_code == 2 and moved.output.strip() == (
        "error: default config with --set: analysis.stages: entry 0 (trust): methods: the methods are "
        "analysis.methods now (one list for the drawing and the scoring); move the list there")
    result = runner.invoke(app, ["train", "--set", "analysis.methods=[saliency, guided_backprp]"])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("error: ")
    assert "analysis.methods: unknown method 'guided_backprp'" in result.output


OWN_METHOD = '''
from interp.attribution import Method

class GradientSquared(Method):
    name = "gradient_squared"
    colour = "#ff00ff"

    def attribute(self, model, inputs, target, power: int = 2):
        inputs = inputs.detach().requires_grad_(True)
        score = model(inputs).gather(1, target[:, None]).sum()
        (gradient,) = __import__("torch").autograd.grad(score, inputs)
        return gradient ** power
'''


def test_a_method_of_ones_own_by_import_path_is_drawn_and_scored(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "mymethods.py").write_text(OWN_METHOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        model = build_model(ModelConfig(arch="mlp", hidden=[8]), (1, 12, 12), 5).eval()
        x, y = torch.randn(2, 1, 12, 12), torch.tensor([1, 2])
        x1 = x.clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(model(x1).gather(1, y[:, None]).sum(), x1)
        torch.testing.assert_close(attribute("mymethods:GradientSquared", model, x, y, power=3), gradient**3)

        result = runner.invoke(app, [
            "train", "--save-dir", str(tmp_path / "save"), "--set", "train.epochs=1", "--set", "data.train_limit=500",
            "--set", "analysis.methods=[saliency, 'mymethods:GradientSquared']",
            "--set", "analysis.stages=[attributions, {trust: {images: 10, steps: 4, road: never, "
                     "randomization_images: 4, resamples: 200}}]"])
        assert result.exit_code == 0, result.output
        run = tmp_path / "save" / "mnist-mlp"
        saved = json.loads((run / "epoch_001" / "trust" / "trust.json").read_text())
        assert list(saved["methods"]) == ["saliency", "gradient_squared"]
        assert saved["methods"]["gradient_squared"]["verdict"].split(":")[0] in ("trust", "doubt", "uncertain")
        from interp import load_record

        record = load_record(run, "attributions", 1)
        figure = record.figures["attributions"]
        assert figure["fields"]["names"] == ["saliency", "gradient_squared"]
        assert figure["fields"]["maps"]["gradient_squared"].shape == (10, 28, 28)
        assert "mymethods:GradientSquared" in (run / "config.yaml").read_text()
    finally:
        METHODS.pop("gradient_squared", None)


def test_the_functional_api_snippet_of_the_readme_runs() -> None:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    found = re.search(r"<!-- functional-api -->\s*```python\n(.*?)```", text, re.S)
    assert found, "the README's functional API snippet (marked <!-- functional-api -->) is missing"
    scope: dict = {}
    exec(compile(textwrap.dedent(found.group(1)), "README.md", "exec"), scope)  # noqa: S102 — our own README
    assert scope["maps"].shape == (8, 1, 28, 28)
    assert scope["deleted"].shape == (8,) and bool(((scope["deleted"] >= 0) & (scope["deleted"] <= 1)).all())
    assert len(scope["cascade"].correlations) == 2  # the MLP's two blocks: head, then fc1


def test_adebayo_guided_backprop_survives_the_top_layers_saliency_and_gradcam_do_not(tmp_path: Path) -> None:
    """Adebayo et al. 2018 on the all-conv net (width 16) trained 2 epochs on the sample: Guided Backprop's
    maps barely change when the top layers are re-initialized, so its verdict is a doubt that names the
    randomization check; saliency's and Grad-CAM's maps change, and the check passes for them."""
    result = runner.invoke(app, [
        "train", "--save-dir", str(tmp_path), "--set", "model.arch=allconv", "--set", "model.width=16",
        "--set", "train.epochs=2", "--set", "analysis.every=100",
        "--set", "analysis.methods=[saliency, guided_backprop, gradcam, guided_gradcam]",
        "--set", "analysis.stages=[{trust: {images: 20, road: never, resamples: 500}}]"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "mnist-allconv" / "epoch_002" / "trust" / "trust.json").read_text())["methods"]

    def check(method: str) -> dict:
        return next(c for c in saved[method]["checks"] if c["check"] == "ρ after the top layers")

    assert saved["guided_backprop"]["randomization_top"]["layers"] == ["classifier", "features.conv8",
                                                                      "features.conv7"]
    assert check("guided_backprop")["outcome"] == "fail" and check("guided_backprop")["value"] > 0.8
    assert saved["guided_backprop"]["verdict"].startswith("doubt")
    assert "survives re-initializing classifier, conv8, conv7" in saved["guided_backprop"]["verdict"]
    for method in ("saliency", "gradcam"):
        assert check(method)["outcome"] == "pass" and check(method)["value"] < 0.4, (method, check(method))
        assert "re-initializing" not in saved[method]["verdict"]
