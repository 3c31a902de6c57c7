"""Every registered stage, run on tiny real models; plus the stages' known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import interp
from interp.analysis.dynamics import Dynamics
from interp.analysis.evaluation import Evaluation
from interp.analysis.health import Health
from interp.analysis.runner import StageContext
from interp.analysis.runner import run_stages as _run_stages
from interp.config import DataConfig, ModelConfig
from interp.data import Data, load_data, select_probe
from interp.models import build_model
from interp.run import Run
from interp.stages import STAGES


def run_stages(stages, ctx) -> dict:
    return _run_stages(stages, ctx).numbers

ANIMATIONS = {"activation_gif", "neuron_video"}
ARCHS = {"mlp": ModelConfig(arch="mlp", hidden=[32, 16]), "allconv": ModelConfig(arch="allconv", width=4)}


@pytest.fixture(scope="module")
def data():
    full = load_data(DataConfig(dataset="mnist-sample"))
    from dataclasses import replace

    return replace(full, eval_x=full.eval_x[:300], eval_y=full.eval_y[:300])


def make_context(data, arch: str, folder: Path, epoch: int = 1, final: bool = True):
    torch.manual_seed(0)
    model = build_model(ARCHS[arch], data.input_shape, 10).eval()
    run = Run(folder)
    notices: list[str] = []
    evaluation = Evaluation(model=model, data=data, probe=select_probe(data, 1, 0), epoch=epoch, final=final)
    ctx = StageContext(evaluation=evaluation, sink=run.sink, folder=f"epoch_{epoch:03d}",
                       initial_state={k: v.clone() for k, v in model.state_dict().items()},
                       notice=notices.append)
    return ctx, run, notices


def events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def recorded_dynamics(model: torch.nn.Module, data: Data) -> Dynamics:
    dynamics = Dynamics(data.train_y, len(data.classes))
    dynamics.start_epoch()
    with torch.no_grad():
        index = torch.arange(len(data.train_y))
        dynamics.observe(index, model(data.normalize(data.train_x)))
    dynamics.end_epoch(1)
    return dynamics


def recorded_health(model: torch.nn.Module, data: Data) -> Health:
    """One epoch of four SGD steps on a copy of ``model`` (every step sampled), as the trainer records it."""
    import copy

    twin = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(twin.parameters(), lr=0.01)
    health = Health(every=1)
    health.start_epoch()
    with health.watch(twin, optimizer):
        for batch in torch.arange(len(data.train_y)).split(len(data.train_y) // 4 or 1)[:4]:
            loss = torch.nn.functional.cross_entropy(twin(data.normalize(data.train_x[batch])), data.train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    health.end_epoch(1)
    return health


def small_options(name: str) -> dict:
    return {"integrated_gradients": {"steps": 8}, "saliency": {"smoothgrad_samples": 2},
            "embeddings": {"points": 60, "perplexity": 5}, "trust": {"steps": 8, "images": 3, "ig_steps": 8},
            "feature_visualization": {"steps": 4, "every": 1},
            }.get(name, {})


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("name", list(STAGES))
def test_every_stage_runs_on_a_tiny_model(name: str, arch: str, data, tmp_path: Path) -> None:
    stage = STAGES[name](STAGES[name].Options(**small_options(name)))
    ctx, run, notices = make_context(data, arch, tmp_path)
    stage.prepare(ctx.model, data)
    if "dynamics" in stage.needs:  # one epoch of the training examples' dynamics, from the model's own logits
        ctx.dynamics = recorded_dynamics(ctx.model, data)
    if "health" in stage.needs:  # one epoch of the layers' health, from a few training steps
        ctx.health = recorded_health(ctx.model, data)
    if name == "influence":  # the epoch's classifier, as the trainer keeps it in the run folder
        from interp.analysis import training
        from interp.analysis.influence import classifier_part

        ctx.run_folder = tmp_path
        (tmp_path / "training").mkdir()
        (tmp_path / training.record_name(1)).write_bytes(
            training.encode(1, {"classifier": classifier_part(ctx.model, 0.01)}))
    numbers = run_stages([stage], ctx)
    run.close()
    reason = stage.skip_reason(ctx.model, data)
    if reason:  # e.g. Grad-CAM on an MLP: one notice, nothing written
        assert notices == [f"{name}: skipped ({reason})"]
        assert not (tmp_path / "epoch_001" / name).exists()
        return
    assert f"seconds/{name}" in numbers
    if name in ANIMATIONS:  # GIFs rather than figures; checked frame by frame in their own tests below
        return
    assert numbers[f"seconds/{name}"] > 0
    pngs = sorted((tmp_path / "epoch_001" / name).glob("*.png"))
    assert pngs, f"{name} drew nothing"
    logged = events(tmp_path)
    for png in pngs:
        image = Image.open(png)
        assert image.width > 200 and image.height > 150
        pixels = np.asarray(image.convert("L"))
        assert pixels.std() > 10  # not a blank canvas
        tag = f"{name}/{png.stem}"
        assert tag in logged.Tags()["images"], f"{tag} not in TensorBoard"
        stored = logged.Images(tag)[-1]
        assert stored.step == 1 and (stored.width, stored.height) == image.size
    for key, value in numbers.items():
        assert np.isfinite(value), key
        if not key.startswith("seconds/"):
            assert [e.value for e in logged.Scalars(key)] == [pytest.approx(value, rel=1e-5)]


def test_stage_registry_has_descriptions() -> None:
    for name, cls in STAGES.items():
        assert cls.name == name and len(cls.description) > 20


def test_integrated_gradients_are_complete(data, tmp_path: Path) -> None:
    from interp.attribution import integrated_gradients, target_logits

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mlp", hidden=[24], activation="tanh"), data.input_shape, 10).eval()
    probe = select_probe(data, 1, 0)
    black = data.black(probe.x)
    attributions, delta = integrated_gradients(model, probe.x, probe.y, black, steps=200)
    expected = target_logits(model, probe.x, probe.y) - target_logits(model, black, probe.y)
    # completeness: the attributions add up to F(x) − F(baseline)
    assert torch.allclose(attributions.sum(dim=(1, 2, 3)), expected, rtol=1e-3, atol=1e-3)
    assert torch.allclose(delta, attributions.sum(dim=(1, 2, 3)) - expected, atol=1e-4)

    stage = STAGES["integrated_gradients"](STAGES["integrated_gradients"].Options(steps=64))
    ctx, run, notices = make_context(data, "mlp", tmp_path)
    ctx.evaluation.model = model
    run_stages([stage], ctx)
    run.close()
    assert ctx.numbers["integrated_gradients/completeness_error"] < 0.01
    record = interp.load_record(tmp_path, "integrated_gradients", 1)  # the maps as the figure shows them
    maps = torch.from_numpy(record.figures["integrated_gradients"]["fields"]["arrays"]["black"])
    assert torch.allclose(maps.sum(dim=(1, 2)), expected, rtol=0.02, atol=0.02)
    kept = record.data["baselines"]["black"]  # and Captum's delta, F(x) − F(black) beside them
    assert torch.allclose(torch.from_numpy(kept["difference"]), expected, atol=1e-5)
    assert record.numbers["integrated_gradients/completeness_error"] == ctx.numbers["integrated_gradients/completeness_error"]
    assert not notices


def test_images_the_first_points_leave_incomplete_are_integrated_again(data, tmp_path: Path) -> None:
    """IG with ``first_steps`` points; the images whose completeness error is above 5 % again with ``steps``:
    each map equals Captum's with the points it got, and the figure's title says how many got more."""
    from interp.attribution import integrated_gradients, target_logits, to_map

    stage = STAGES["integrated_gradients"](STAGES["integrated_gradients"].Options(steps=50, first_steps=4,
                                                                                baselines=["black"]))
    ctx, run, notices = make_context(data, "allconv", tmp_path)
    run_stages([stage], ctx)
    run.close()
    model, x, y = ctx.model, ctx.probe.x, ctx.probe.y
    black = data.black(x)
    coarse, delta = integrated_gradients(model, x, y, black, 4)
    fine, _ = integrated_gradients(model, x, y, black, 50)
    difference = target_logits(model, x, y) - target_logits(model, black, y)
    again = (delta.abs() / difference.abs()) > 0.05
    assert 0 < int(again.sum()) < len(x)  # some images, not all
    expected = torch.where(again[:, None, None], to_map(fine, signed=True), to_map(coarse, signed=True))
    fields = interp.load_record(tmp_path, "integrated_gradients", 1).figures["integrated_gradients"]["fields"]
    torch.testing.assert_close(torch.from_numpy(fields["arrays"]["black"]), expected.float(), atol=1e-5, rtol=1e-4)
    assert fields["steps"] == f"4 (50 for {int(again.sum())} of the integrals)"


def test_too_few_steps_warns(data, tmp_path: Path) -> None:
    stage = STAGES["integrated_gradients"](STAGES["integrated_gradients"].Options(steps=2))
    ctx, run, notices = make_context(data, "allconv", tmp_path)
    run_stages([stage], ctx)
    run.close()
    assert ctx.numbers["integrated_gradients/completeness_error"] > 0.05  # two steps are far too coarse
    assert len(notices) == 1 and "raise the steps option (now 2)" in notices[0]


def test_saliency_is_the_gradient_of_the_true_class_logit(data, tmp_path: Path) -> None:
    ctx, run, _ = make_context(data, "mlp", tmp_path)
    run_stages([STAGES["saliency"](STAGES["saliency"].Options(smoothgrad=False))], ctx)
    run.close()
    x = ctx.probe.x.clone().requires_grad_(True)
    logits = ctx.model(x)
    true_class = logits.gather(1, ctx.probe.y.view(-1, 1)).sum()
    (by_hand,) = torch.autograd.grad(true_class, x)
    assert torch.allclose(ctx.maps["saliency"], by_hand.abs()[:, 0], atol=1e-6)
    (all_logits,) = torch.autograd.grad(ctx.model(x).sum(), x)
    assert not torch.allclose(ctx.maps["saliency"], all_logits.abs()[:, 0], atol=1e-4)


def test_projector_has_labels_and_sprites_for_every_epoch(data, tmp_path: Path) -> None:
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    stage = STAGES["embeddings"](STAGES["embeddings"].Options(points=50, tsne="never"))
    for epoch in (0, 1):
        ctx, run, _ = make_context(data, "mlp", tmp_path, epoch=epoch)
        run_stages([stage], ctx)
        run.close()  # a new writer per epoch, as in analyze and resume: earlier entries must survive
    config = text_format.Parse((tmp_path / "projector_config.pbtxt").read_text(), ProjectorConfig())
    assert [e.tensor_name for e in config.embeddings] == ["embeddings, previous epoch 000",
                                                          "embeddings, last epoch (1)"]
    # the projector opens on the first entry in its order (metadata first, more points first — all have
    # 50 here —, then by name): the last epoch
    opening = sorted(config.embeddings, key=lambda e: (not e.metadata_path, e.tensor_name))
    assert opening[0].tensor_name == "embeddings, last epoch (1)"
    for entry in config.embeddings:
        folder = tmp_path / entry.tensor_path.rsplit("/", 1)[0]
        rows = (folder / "metadata.tsv").read_text().splitlines()
        assert rows[0] == "label\tpredicted" and len(rows) == 50 + 1
        assert {r.split("\t")[0] for r in rows[1:]} <= set(data.classes)
        vectors = np.loadtxt(folder / "tensors.tsv", delimiter="\t")
        assert vectors.shape == (50, 16)
        sprite = Image.open(tmp_path / entry.sprite.image_path)
        assert list(entry.sprite.single_image_dim) == [28, 28]
        assert sprite.size == (8 * 28, 8 * 28) and max(sprite.size) <= 8192  # ceil(sqrt(50)) = 8 per side
    # the first thumbnail is the first chosen evaluation image
    index = torch.randperm(len(data.eval_x), generator=torch.Generator().manual_seed(0))[:50].sort().values
    tile = np.asarray(sprite.convert("L"))[:28, :28].astype(float)
    assert np.abs(tile - data.eval_x[index[0], 0].numpy()).max() <= 2


def test_activation_hooks_are_removed_even_when_the_stage_fails(data, tmp_path: Path, monkeypatch) -> None:
    def hooks(model) -> int:
        return sum(len(m._forward_hooks) for m in model.modules())

    stage = STAGES["activations"](STAGES["activations"].Options())
    ctx, run, notices = make_context(data, "allconv", tmp_path)
    run_stages([stage], ctx)
    assert hooks(ctx.model) == 0
    names, outputs, _ = stage.capture(ctx)
    assert names == ["features.conv3", "features.conv6", "features.conv8"]
    assert outputs["features.conv3"].shape[1:] == (4, 14, 14)  # width 4, after the first stride-2 conv

    import interp.plotting

    def broken(*args, **kwargs):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(interp.plotting, "mosaic", broken)
    with pytest.raises(RuntimeError, match="drawing failed"):
        _run_stages([stage], ctx, strict=True)  # analysis.strict: the failure stops the run
    assert hooks(ctx.model) == 0
    assert ctx.model.training is False  # run_stages put the mode back
    run.close()
    # without strict: one notice, the traceback in errors.log, the other stages go on
    ctx, run, notices = make_context(data, "allconv", tmp_path)
    results = _run_stages([stage, STAGES["confusion"]()], ctx)
    run.close()
    assert hooks(ctx.model) == 0
    assert results.failed == {"activations": "RuntimeError: drawing failed"}
    assert "seconds/confusion" in results.numbers and "seconds/activations" not in results.numbers
    assert any(n.startswith("activations: failed at epoch 1 (RuntimeError: drawing failed)") for n in notices)
    log = (tmp_path / "errors.log").read_text()
    assert "stage activations · epoch 1" in log and "Traceback" in log and "drawing failed" in log


def test_stages_run_without_cudnn_autotuning_and_training_gets_it_back(data, tmp_path: Path, monkeypatch) -> None:
    """The stages' many one-off shapes are not autotuned; the training's setting comes back, also after a
    failure."""
    seen = []
    stage = STAGES["confusion"]()
    real = type(stage).run

    def spy(self, ctx):  # type: ignore[no-untyped-def]
        seen.append(torch.backends.cudnn.benchmark)
        return real(self, ctx)

    monkeypatch.setattr(type(stage), "run", spy)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    ctx, run, _ = make_context(data, "allconv", tmp_path)
    run_stages([stage], ctx)
    assert seen == [False] and torch.backends.cudnn.benchmark is True
    monkeypatch.setattr(type(stage), "run", lambda self, ctx: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        _run_stages([stage], ctx, strict=True)
    run.close()
    assert torch.backends.cudnn.benchmark is True


def test_neuron_tiles_are_the_first_layer_weights(data) -> None:
    from interp.stages.neurons import first_layer_tiles, neuron_grid

    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mlp", hidden=[64]), data.input_shape, 10)
    tiles = first_layer_tiles(model, data.input_shape, 256)
    weight = model.features.fc1[0].weight.detach()
    assert tiles.shape == (64, 28, 28)
    assert np.array_equal(tiles[5], weight[5].reshape(28, 28).numpy())
    grid, limit = neuron_grid(tiles)
    assert grid.shape == (8 * 29 + 1, 8 * 29 + 1)  # 8 × 8 tiles with 1-pixel borders
    assert limit == pytest.approx(weight.abs().max().item())
    assert np.array_equal(grid[1 + 29:1 + 29 + 28, 1:29], tiles[8])  # second row, first tile


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_activation_gif_walks_through_every_block(arch: str, data, tmp_path: Path) -> None:
    from interp.models import feature_blocks
    from interp.plotting import grey_rgb

    stage = STAGES["activation_gif"]()
    ctx, run, _ = make_context(data, arch, tmp_path)
    stage.prepare(ctx.model, data)
    run_stages([stage], ctx)
    run.close()
    gif = Image.open(tmp_path / "epoch_001" / "activation_gif" / "activation_gif.gif")
    assert gif.n_frames == 1 + len(feature_blocks(ctx.model))  # the input, then one frame per block
    assert gif.size == stage.options.size
    # frame 0 is the probe image itself, enlarged by a whole factor with square pixels
    first = np.asarray(gif.convert("RGB")).astype(int)
    source = grey_rgb(ctx.pixels(0))
    zoom = min(gif.width // source.shape[1], (gif.height - 28) // source.shape[0])
    left = (gif.width - source.shape[1] * zoom) // 2
    shown = first[28:28 + source.shape[0] * zoom, left:left + source.shape[1] * zoom]
    assert np.abs(shown - np.kron(source, np.ones((zoom, zoom, 1)))).max() <= 2


def test_neuron_video_films_the_weights_as_they_change(data, tmp_path: Path) -> None:
    from interp.stages.neurons import first_layer_tiles
    from interp.video import mp4_duration

    stage = STAGES["neuron_video"](STAGES["neuron_video"].Options(every=2, formats=["gif", "mp4"], fps=4))
    ctx, run, notices = make_context(data, "mlp", tmp_path, epoch=0, final=False)
    stage.prepare(ctx.model, data)
    run_stages([stage], ctx)
    run.close()
    initial = first_layer_tiles(ctx.model, data.input_shape, 64).copy()
    layer = ctx.model.features.fc1[0]
    for step in range(1, 9):  # eight "optimiser steps", a frame every second one
        with torch.no_grad():
            layer.weight.add_(0.05 * torch.randn_like(layer.weight))
        stage.on_step(ctx.model, step, 1)
    assert [s for s, _, _ in stage.frames] == [0, 2, 4, 6, 8]
    assert np.array_equal(stage.frames[0][2], initial)  # a snapshot, not a view of the live weights
    assert np.array_equal(stage.frames[-1][2], first_layer_tiles(ctx.model, data.input_shape, 64))
    stage.on_train_end(ctx.model, run.sink, notices.append)
    gif = Image.open(tmp_path / "animations" / "neuron_video.gif")
    assert gif.n_frames == 5
    frames = []
    for i in range(gif.n_frames):
        gif.seek(i)
        frames.append(np.asarray(gif.convert("RGB")).astype(int))
    assert np.abs(frames[0] - frames[-1]).mean() > 5  # the grid changes as the weights do
    assert mp4_duration(tmp_path / "animations" / "neuron_video.mp4") == pytest.approx(5 / 4, abs=0.01)


def test_training_calls_the_neuron_video_every_k_steps(tmp_path: Path) -> None:
    from conftest import quick_config
    from interp.train import fit

    cfg = quick_config("data.batch_size=100", "analysis.stages=[{neuron_video: {every: 3}}]")
    result = fit(cfg, save_dir=tmp_path)
    steps = 2 * 1000 // 100  # two epochs of ten steps
    gif = Image.open(result.run_dir / "animations" / "neuron_video.gif")
    assert gif.n_frames == 1 + steps // 3  # the untrained grid, then steps 3, 6, … 18


def test_projector_features_come_from_the_evaluation_pass(tmp_path: Path) -> None:
    """Training hands the embeddings stage the features of its own evaluation pass; they must be the
    features of the final weights on the chosen evaluation images."""
    from conftest import quick_config
    from interp.run import Run as RunFolder
    from interp.train import fit, load_model

    cfg = quick_config("analysis.stages=[{embeddings: {points: 50, tsne: never}}]")
    result = fit(cfg, save_dir=tmp_path)
    _, model, data, _, _ = load_model(RunFolder(result.run_dir), "last")
    index = torch.randperm(len(data.eval_x), generator=torch.Generator().manual_seed(0))[:50].sort().values
    with torch.no_grad():
        _, expected = model.forward_features(data.normalize(data.eval_x[index]))
    saved = np.loadtxt(result.run_dir / "00002" / "embeddings" / "tensors.tsv", delimiter="\t")
    assert saved.shape == (50, expected.shape[1])
    assert np.allclose(saved, expected.numpy(), atol=1e-4)


def test_a_foreign_projector_entry_is_kept_and_never_breaks_the_run(data, tmp_path: Path) -> None:
    """A run folder's projector_config.pbtxt may hold entries interp did not write (hand-edited, another
    tool's): they stay as they are, and interp's own entries are still named and ordered."""
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    (tmp_path / "projector_config.pbtxt").write_text('embeddings {\n  tensor_name: "mine"\n  tensor_path: "x.tsv"\n}\n')
    stage = STAGES["embeddings"](STAGES["embeddings"].Options(points=20, tsne="never"))
    ctx, run, _ = make_context(data, "mlp", tmp_path, epoch=1)
    _run_stages([stage], ctx, strict=True)
    run.close()
    config = text_format.Parse((tmp_path / "projector_config.pbtxt").read_text(), ProjectorConfig())
    assert [(e.tensor_name, e.tensor_path) for e in config.embeddings] == [
        ("mine", "x.tsv"), ("embeddings, last epoch (1)", "00001/embeddings/tensors.tsv")]
