"""``interp analyze``: the analysis stages again, on a saved checkpoint of a finished (or running) run."""

from __future__ import annotations

import json
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
    from .checkpoint import load_checkpoint
    from .config import load_config
    from .data import select_probe
    from .stages import STAGES, StageContext, build_stages, parse_stage_specs, run_stages
    from .train import load_model, resolve_device

    run = Run.open(Path(run_dir))
    cfg = load_config(run.config_path)
    target = resolve_device(device or cfg.train.device)
    configured = dict(parse_stage_specs(cfg.analysis.stages))
    if stages:
        unknown = [name for name in stages if name not in STAGES]
        if unknown:
            raise UserError(f"--stage {unknown[0]}: unknown stage (known: {', '.join(STAGES)})")
        specs: list[Any] = [{name: configured.get(name, {})} for name in stages]
    else:
        specs = list(cfg.analysis.stages)
    stage_list = build_stages(specs)

    cfg, model, data, state, path = load_model(run, checkpoint, target)
    label = checkpoint if checkpoint in ("best", "last", "init") else Path(checkpoint).stem
    probe = select_probe(data, cfg.analysis.probe_per_class, cfg.seed)
    for stage in stage_list:
        stage.prepare(model, data)
    init = run.checkpoints / "init.pt"
    initial_state = load_checkpoint(init, map_location=target)["model"] if init.is_file() else None
    folder = run.path / "analysis" / label
    epoch = int(state.get("epoch", 0))
    ctx = StageContext(model=model, epoch=epoch, final=True, device=target, data=data, probe=probe,
                       writer=run.writer, folder=folder, tag=f"analysis/{label}/", initial_state=initial_state,
                       notice=notice, eval_batch_size=cfg.data.eval_batch_size)
    try:
        numbers = run_stages(stage_list, ctx)
    finally:
        run.close()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps({"checkpoint": str(path), "epoch": epoch, **numbers}, indent=1),
                                         encoding="utf-8")
    return AnalyzeResult(folder=folder, epoch=epoch, numbers=numbers, summaries=ctx.shared.get("summaries", {}))
