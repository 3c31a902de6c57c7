"""``interp analyze``: the analysis stages again, on a saved checkpoint of a finished (or running) run."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError
from .run import Run

__all__ = ["AnalyzeResult", "analyze"]


@dataclass
class AnalyzeResult:
    folder: Path
    epoch: int
    numbers: dict[str, float]
    summaries: dict[str, Any] = field(default_factory=dict)


def analyze(run_dir: Path | str, *, checkpoint: str = "best", stages: list[str] | None = None,
            device: str | None = None, notice: Callable[[str], None] = lambda message: None) -> AnalyzeResult:
    """Rebuild the run's model from config.yaml, load ``checkpoint`` (best, last or a path; weights only)
    and run the stages; figures and numbers go to ``<run>/analysis/<checkpoint>/`` and TensorBoard
    (tags under ``analysis/<checkpoint>/``)."""
    from .analysis.api import Analysis
    from .analysis.evaluation import evaluate
    from .attribution import check_methods
    from .checkpoint import load_checkpoint
    from .config import load_config
    from .data import select_probe
    from .models import logits_model
    from .stages import check_stages, default_stage_specs, parse_stage_specs, stage_class
    from .train import load_model, resolve_device

    run = Run.open(Path(run_dir))
    if not run.checkpoints.is_dir() and run.animations.is_dir():
        raise UserError(f"run {run.path} holds an animation (interp animate), not a trained model: there is no "
                        "checkpoint to analyze")
    if not run.config_path.is_file():
        raise UserError(f"run {run.path} has no config.yaml (it was written by the Python API), so its model "
                        "cannot be rebuilt; call Analyzer.run on your model instead")
    cfg = load_config(run.config_path)
    check_stages(cfg.analysis.stages, f"{run.config_path}: analysis.stages")
    check_methods(cfg.analysis.methods, f"{run.config_path}: analysis.methods")
    target = resolve_device(device or cfg.train.device)
    configured = dict(parse_stage_specs(cfg.analysis.stages if cfg.analysis.stages is not None
                                        else default_stage_specs()))
    if stages:
        for name in stages:
            try:
                stage_class(name)
            except ValueError as exc:
                raise UserError(f"--stage {name}: {exc}") from None
        specs: list[Any] | None = [{name: configured.get(name, {})} for name in stages]
    else:
        specs = cfg.analysis.stages
    stage_list = check_stages(specs, "--stage")

    label = checkpoint if checkpoint in ("best", "last", "init") else Path(checkpoint).stem
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}", label):
        raise UserError(f"--checkpoint {checkpoint}: its name {label!r} cannot name a folder under "
                        f"{run.path / 'analysis'} (letters, digits, '.', '_' and '-', not starting with '.'); "
                        "copy the file to a plainer name")
    cfg, model, data, state, path = load_model(run, checkpoint, target)
    probe = select_probe(data, cfg.analysis.probe_per_class, cfg.seed)
    analyzed = logits_model(model, probe.x)
    init = run.checkpoints / "init.pt"
    initial_state = load_checkpoint(init, map_location=target)["model"] if init.is_file() else None
    analysis = Analysis(stage_list, run.sink, notice=notice, initial_state=initial_state, during_training=False,
                        methods=cfg.analysis.methods)
    analysis.prepare(analyzed, data)
    analysis.run_folder = run.path
    epoch = state.get("epoch", 0)
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise UserError(f"checkpoint {path}: its epoch is {epoch!r}, not a whole number of epochs")
    if any("dynamics" in stage.needs for stage in stage_list):  # the dataset map: the epochs the run recorded
        from .analysis.dynamics import read_dynamics

        analysis.dynamics = read_dynamics(run.path, epoch)
    if any("health" in stage.needs for stage in stage_list):  # the layers' health: the epochs the run recorded
        from .analysis.health import read_health

        analysis.health = read_health(run.path, epoch)
    folder = f"analysis/{label}"
    try:
        evaluation = evaluate(analyzed, data, probe, epoch, final=True, batch_size=cfg.data.eval_batch_size,
                              features=analysis.wants_features, features_layer=cfg.analysis.features_layer)
        results = analysis.run(evaluation, folder, tag=f"{folder}/")
    finally:
        run.close()
    out = run.path / folder
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"checkpoint": str(path), "epoch": epoch, **results.numbers},
                                                 indent=1), encoding="utf-8")
    return AnalyzeResult(folder=out, epoch=epoch, numbers=results.numbers, summaries=results.summaries)
