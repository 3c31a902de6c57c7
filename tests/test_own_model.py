"""Your own model (import paths, torchvision architectures), your own stage, your own loop (Analyzer)."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import interp
from interp.cli import app

runner = CliRunner()
ROOT = Path(__file__).parent.parent
QUICK = ["--set", "data.train_limit=300", "--set", "train.epochs=1", "--set", "train.device=cpu"]
SMALL_STAGES = ("analysis.stages=[confusion, {saliency: {smoothgrad_samples: 2}}, {integrated_gradients: {steps: 8}}, "
                "gradcam, weights, neurons, activations, {embeddings: {points: 100, perplexity: 5}}, "
                "{trust: {steps: 5, images: 3, ig_steps: 8, random_rankings: 1}}]")

USER_MODULE = '''
import torch
from torch import nn

def build(num_classes=10, in_channels=1, width=8):
    """Written the natural way: no interp types, keyword arguments only."""
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

class TupleNet(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 12), nn.ReLU())
        self.head = nn.Linear(12, num_classes)
    def forward(self, x):
        hidden = self.body(x)
        return self.head(hidden), hidden

class DictNet(TupleNet):
    def forward(self, x):
        logits, hidden = super().forward(x)
        return {"logits": logits, "hidden": hidden}

def raises(num_classes):
    raise ValueError("no such width")

def not_a_module(num_classes):
    return 42

def wrong_outputs(num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(784, num_classes + 3))

NOT_CALLABLE = 3

from interp.analysis.records import register_view
from interp.stages import Stage, Summary

@register_view
def draw_brightness(values, epoch):
    from interp.plotting import figure
    fig, axes = figure(1, 1, panel=3)
    axes[0, 0].hist(values, bins=20)
    axes[0, 0].set_title(f"mean pixel of each probe image, epoch {epoch}")
    return fig

class Brightness(Stage):
    name = "brightness"
    description = "mean pixel value of the probe images (a stage of the user's own)"
    needs = frozenset({"images"})

    def run(self, ctx):
        per_image = ctx.probe.pixels.mean(dim=(1, 2, 3)).cpu().numpy()
        value = float(per_image.mean())
        ctx.record("mean", value)
        ctx.save_json("brightness.json", {"mean": value})
        ctx.draw("brightness", draw_brightness, per_image, ctx.epoch)
        return Summary("Brightness", ["what", "value"], [["mean pixel", value]])
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch) -> str:
    name = f"usermodels_{tmp_path.name.replace('-', '_')}"
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    monkeypatch.chdir(tmp_path)
    yield name
    sys.modules.pop(name, None)


def test_user_factory_from_yaml_trains_and_is_analyzed(user_module: str, tmp_path: Path) -> None:
    config = tmp_path / "mine.yaml"
    config.write_text(textwrap.dedent(f"""
        name: mine
        model: {{arch: "{user_module}:build", args: {{width: 6}}}}
        analysis:
          stages: [confusion, gradcam, embeddings, "{user_module}:Brightness"]
    """))
    result = runner.invoke(app, ["train", "-c", str(config), *QUICK])
    assert result.exit_code == 0, result.output
    run = tmp_path / "save" / "mine"
    assert "Brightness" in result.output and "mean pixel" in result.output  # the user stage's table is printed
    saved = (run / "config.yaml").read_text()
    assert f"arch: {user_module}:build" in saved and "width: 6" in saved
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    from interp.config import DataConfig
    from interp.data import load_data, select_probe

    probe = select_probe(load_data(DataConfig(dataset="mnist-sample")), 1, 0)
    expected = float(probe.pixels.mean())  # the same ten digits every epoch, pixels in [0, 1]
    assert 0.05 < expected < 0.5
    assert rows[0]["brightness/mean"] == pytest.approx(expected) and rows[1]["brightness/mean"] == pytest.approx(expected)
    for name in ("confusion/confusion.png", "gradcam/gradcam.png", "embeddings/embeddings.png",
                 "brightness/brightness.json", "brightness/summary.json", "brightness/brightness.png"):
        assert (run / "epoch_001" / name).is_file(), name  # the user's figure too, drawn by the worker
    assert not (run / "errors.log").exists()
    record = interp.load_record(run, "brightness", 1)
    assert record.figures["brightness"]["fields"]["values"].mean() == pytest.approx(expected, rel=1e-5)
    # the penultimate features are the Linear's input: 6 per image in the projector
    tensors = next((run / "00001").rglob("tensors.tsv")).read_text().splitlines()
    assert len(tensors[0].split("\t")) == 6
    # interp analyze rebuilds the model from the import path in config.yaml
    again = runner.invoke(app, ["analyze", str(run), "--stage", "confusion"])
    assert again.exit_code == 0, again.output
    assert json.loads((run / "analysis" / "best" / "metrics.json").read_text())["confusion/accuracy"] == \
        pytest.approx(max(r["eval_accuracy"] for r in rows))


@pytest.mark.parametrize("factory", ["TupleNet", "DictNet"])
def test_models_returning_tuples_or_dicts(user_module: str, factory: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--set", f"model.arch={user_module}:{factory}", *QUICK, "--set",
                                 "analysis.stages=[confusion, {saliency: {smoothgrad: false}}, embeddings]"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "save" / f"mnist-{factory}"  # named after the data and the model
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["confusion/accuracy"] == pytest.approx(rows[-1]["eval_accuracy"])
    assert (run / "epoch_001" / "saliency" / "saliency.png").is_file()
    tensors = next((run / "00001").rglob("tensors.tsv")).read_text().splitlines()
    assert len(tensors[0].split("\t")) == 12  # the head's input


@pytest.mark.parametrize(("arch", "message"), [
    ("nosuchmodule_xyz:build", "model.arch 'nosuchmodule_xyz:build': cannot import module 'nosuchmodule_xyz' "
                               "(ModuleNotFoundError"),
    ("{mod}:nothere", "model.arch '{mod}:nothere': module '{mod}' has no attribute 'nothere'"),
    ("{mod}:NOT_CALLABLE", "model.arch '{mod}:NOT_CALLABLE': 'NOT_CALLABLE' is a int, not a function or class"),
    ("{mod}:raises", "model.arch '{mod}:raises': the factory raised ValueError when called with (num_classes=10): "
                     "no such width"),
    ("{mod}:not_a_module", "model.arch '{mod}:not_a_module' returned a int, not a torch.nn.Module"),
    ("{mod}:wrong_outputs", "model.arch '{mod}:wrong_outputs': the model's output for a batch of 10 has shape "
                            "(10, 13); expected (10, 10)"),
    (":", "model.arch ':': expected package.module:factory"),
    ("../x:y", "model.arch '../x:y': expected package.module:factory"),
    ("torchvision:resnet999", "model.arch torchvision:resnet999: not a torchvision classification model"),
    ("resnet", "model.arch: unknown model 'resnet'"),
])
def test_bad_models_exit_2_with_one_line(user_module: str, arch: str, message: str) -> None:
    arch, message = arch.format(mod=user_module), message.format(mod=user_module)
    result = runner.invoke(app, ["train", "--set", f"model.arch='{arch}'", *QUICK])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.output
    assert not list(Path("save").glob("*/config.yaml"))  # the model is checked before a run folder is made


def test_analyze_names_a_missing_model_module(user_module: str, tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--set", f"model.arch={user_module}:build", *QUICK,
                                 "--set", "analysis.stages=[confusion]"])
    assert result.exit_code == 0, result.output
    sys.modules.pop(user_module)
    sys.path.remove(str(tmp_path / "pkg"))
    result = runner.invoke(app, ["analyze", "save/mnist-build"])
    assert result.exit_code == 2
    assert result.output.strip() == (f"error: model.arch '{user_module}:build': cannot import module "
                                     f"'{user_module}' (ModuleNotFoundError: No module named '{user_module}')")


def test_torchvision_resnet18_writes_every_applicable_stage(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--set", "model.arch=torchvision:resnet18", *QUICK, "--set", SMALL_STAGES])
    assert result.exit_code == 0, result.output
    run = tmp_path / "save" / "mnist-resnet18"
    figures = {p.relative_to(run / "epoch_001").as_posix() for p in (run / "epoch_001").rglob("*.png")}
    assert figures == {"confusion/confusion.png", "saliency/saliency.png",
                       "integrated_gradients/integrated_gradients.png", "gradcam/gradcam.png", "weights/weights.png",
                       "neurons/neurons.png", "activations/activations.png", "embeddings/embeddings.png",
                       "trust/deletion_insertion.png", "trust/randomization.png", "trust/randomization_maps.png"}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert 0 <= rows[1]["gradcam/zero_maps"] <= 1 and "trust/gradcam/deletion_auc" in rows[1]
    tensors = next((run / "00001").rglob("tensors.tsv")).read_text().splitlines()
    assert len(tensors[0].split("\t")) == 512  # resnet18's fc input
    import torchvision

    from interp.models import last_spatial_layer, torchvision_model

    model = torchvision_model("resnet18", (1, 28, 28), 10)
    assert model.conv1.in_channels == 1 and model.fc.out_features == 10
    assert last_spatial_layer(model)[0] == "layer4"  # by structure
    assert last_spatial_layer(model, torch.zeros(1, 1, 28, 28))[0] == "layer3"  # layer4 is 1×1 on 28×28 digits
    assert last_spatial_layer(torchvision.models.resnet18(), torch.zeros(1, 3, 224, 224))[0] == "layer4"


def test_registering_a_stage_name_twice_warns() -> None:
    from interp.stages import STAGES, Stage, register_stage

    original = STAGES["confusion"]
    try:
        with pytest.warns(UserWarning, match="stage 'confusion' registered twice"):
            @register_stage
            class Again(Stage):
                name = "confusion"
                description = "a second confusion"
    finally:
        STAGES["confusion"] = original


def test_bad_user_stage_entries(user_module: str) -> None:
    for entry, message in ((f"{user_module}:Nope", "cannot import it"), (f"{user_module}:build", "is not a subclass"),
                           ("confusionn", "unknown stage 'confusionn'")):
        result = runner.invoke(app, ["train", "--set", f"analysis.stages=['{entry}']", *QUICK])
        assert result.exit_code == 2, result.output
        assert re.match(r"error: default config with --set: analysis.stages: entry 0: .*" + re.escape(message),
                        result.output.strip()), result.output
