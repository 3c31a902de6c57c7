"""``interp animate``: small networks learning the toy problems, drawn frame by frame.

Every architecture in ``animate.hidden`` is trained side by side on the same data, with the same seed
and the same minibatches, and gets its own panel in one animation:

* ``rings`` (classification): an MLP whose last hidden layer has 2 units feeds one sigmoid output.
  The upper panel is the input plane, coloured by the predicted probability of the outer ring, with the
  ring points on top. The lower panel is the 2-unit hidden space: the ring points, a regular grid of the
  input square [−1, 1]² (lines 0.1 apart) carried through the network, and the decision line
  a·h₁ + b·h₂ + c = 0 of the output layer, where the predicted probability is 0.5.
* ``polynomial`` (regression): the target y = x⁴ − 3x² + x + 1 and the network's output on the 400
  evenly spaced test points. The y range is the target's with a margin, the same in every frame; where
  the output leaves it, triangles at the panel's edge and a note in the panel say so.

The legend wraps into as many rows, and the caption into two lines, as the figure's width needs; the
figure grows to hold them before the first frame, so every frame has the same size.

Frames: ``animate.frames`` = N gives N pictures. Frame 0 is the untrained network; frame k shows it
after k epochs (or k · ``animate.steps_per_frame`` minibatch steps), so N − 1 rounds of training.

Output, in ``save/<run>/animations/``: ``<dataset>.gif`` (always), ``<dataset>.mp4`` (``format: mp4``),
``<dataset>.png`` (the last frame) and ``<dataset>.json`` (loss and accuracy of every architecture at
every frame). The figure's artists are made once and updated in place; each frame is drawn once and
the same pixels go into every file.

The networks are :class:`interp.models.MLP` with ``model.activation``, trained on the CPU with
``train``'s optimizer settings and ``data.batch_size`` (``model.hidden``, ``model.arch``,
``train.device`` and ``data.train_limit`` do not apply here).

The command itself is here; the geometry of the hidden space is in :mod:`interp.animate.geometry`, the
problem and the learners in :mod:`interp.animate.learners`, and the figures in :mod:`interp.animate.figures`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ..config import Config, save_config
from ..errors import UserError
from ..plotting import style
from ..run import Run
from ..train import Reporter, SilentReporter
from ..video import write_video
from .figures import CAPTION_SEPARATOR, PolynomialFigure, RingsFigure
from .learners import Batches, Learner, Problem, check_shapes, make_learners, make_problem, measure

__all__ = ["animate_config"]

TOY_DATASETS = ("rings", "polynomial")


def animate_config(cfg: Config, save_dir: Path | str = "save", name: str | None = None,
                   reporter: Reporter | None = None) -> list[Path]:
    """Train ``cfg.animate.hidden``'s networks side by side on a toy problem and animate them learning.

    ``cfg.data.dataset`` must be ``rings`` or ``polynomial``. Creates a run folder in ``save_dir``
    (named ``name`` exactly when given, else ``cfg.name`` (or the dataset's name) with -2, -3 … if taken), saves the config
    there, and writes the animation into its ``animations/`` folder (see the module docstring).
    Returns the written files: the GIF, the MP4 (``format: mp4``), the last frame as PNG, the metrics JSON.
    """
    reporter = reporter or SilentReporter()
    dataset = cfg.data.dataset
    if dataset not in TOY_DATASETS:
        raise UserError(f"interp animate draws the toy problems, but data.dataset is {dataset!r}: use "
                        "-c configs/rings.yaml or -c configs/polynomial.yaml (or --set data.dataset=rings)")
    shapes = [list(hidden) for hidden in cfg.animate.hidden]
    check_shapes(dataset, shapes)

    problem = make_problem(cfg)
    learners = make_learners(cfg, problem)

    run, moved = Run.create(Path(save_dir), name or cfg.name or cfg.data.dataset, exact=name is not None)
    if moved:
        reporter.notice(moved)
    save_config(cfg.model_copy(update={"name": run.path.name}), run.config_path)  # the real name

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the nets are tiny: more threads only add synchronisation, and cost several times
    try:
        with reporter.progress("animate", cfg.animate.frames) as advance, style():  # the figures' look, here only
            frames, record = _play(cfg, problem, learners, advance)
    finally:
        torch.set_num_threads(threads)

    started = time.perf_counter()
    stem = run.animations / problem.name
    stem.parent.mkdir(parents=True, exist_ok=True)
    formats = ["gif", "mp4"] if cfg.animate.format == "mp4" else ["gif"]  # the GIF always
    outputs = write_video(frames, stem, cfg.animate.fps, formats)
    last = stem.with_suffix(".png")
    Image.fromarray(frames[-1]).save(last)
    outputs.append(last)
    seconds = record["seconds"]
    seconds["write"] = round(time.perf_counter() - started, 3)
    metrics_path = stem.with_suffix(".json")
    metrics_path.write_text(json.dumps(record, indent=1), encoding="utf-8")
    outputs.append(metrics_path)
    count = len(frames)
    reporter.notice(f"{count} frames: training {seconds['train'] / count:.3f} s and drawing "
                    f"{seconds['render'] / count:.3f} s per frame; writing the files {seconds['write']:.1f} s")
    return outputs


def _play(cfg: Config, problem: Problem, learners: list[Learner],
          advance: Callable[[int], None]) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Train and draw every frame; returns the frames and the metrics record (one entry per frame)."""
    figure: RingsFigure | PolynomialFigure = (
        RingsFigure(learners, problem, cfg.model.activation) if problem.classification
        else PolynomialFigure(learners, problem))
    loss_fn: Callable[[Tensor, Tensor], Tensor] = (
        nn.functional.binary_cross_entropy_with_logits if problem.classification else nn.functional.mse_loss)
    steps = cfg.animate.steps_per_frame
    n, batch_size = len(problem.train_x), cfg.data.batch_size
    steps_per_frame = -(-n // batch_size) if steps is None else steps
    unit = "epoch" if steps is None else "step"
    schedule = Batches(n, batch_size, steps, torch.Generator().manual_seed(cfg.seed))
    frames: list[np.ndarray] = []
    entries: list[dict[str, Any]] = []
    seconds = {"train": 0.0, "render": 0.0}
    total = cfg.animate.frames
    captions = [_caption(cfg, problem, frame, steps) for frame in range(total)]
    figure.fit_caption(captions)  # before the first frame, which fixes the layout
    for frame in range(total):
        started = time.perf_counter()
        if frame:
            for index in schedule.next_frame():
                x, y = problem.train_x[index], problem.train_y[index]
                for learner in learners:  # the same minibatches for every architecture
                    learner.model.train()
                    loss = loss_fn(learner.model(x), y)
                    learner.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    learner.optimizer.step()
        for learner in learners:
            learner.history.append(measure(learner, problem))
        drawn = time.perf_counter()
        seconds["train"] += drawn - started
        figure.update(captions[frame])
        frames.append(figure.grab())
        seconds["render"] += time.perf_counter() - drawn
        entry: dict[str, Any] = {"frame": frame, "step": frame * steps_per_frame}
        if steps is None:
            entry["epoch"] = frame
        entry["models"] = [{"shape": learner.label, **learner.history[-1]} for learner in learners]
        entries.append(entry)
        advance(1)
    record = {
        "dataset": problem.name,
        "architectures": [learner.label for learner in learners],
        "frame_unit": unit,
        "steps_per_frame": steps_per_frame,
        "batch_size": batch_size,
        "fps": cfg.animate.fps,
        "frames": entries,
        "seconds": {key: round(value, 3) for key, value in seconds.items()},
    }
    return frames, record


def _caption(cfg: Config, problem: Problem, frame: int, steps: int | None) -> str:
    """The caption of a frame: the problem and the training so far, then the optimizer's settings."""
    progress = frame * (1 if steps is None else steps)
    unit = "epoch" if steps is None else "step"
    when = "untrained" if frame == 0 else f"after {progress} {unit}{'s' if progress > 1 else ''}"
    return CAPTION_SEPARATOR.join([f"{problem.name}, {when}",
                                   f"{cfg.train.optimizer} lr {cfg.train.lr:g}, batch {cfg.data.batch_size}"])
