"""The stage runner: running stages in order on a :class:`~interp.stages.base.StageContext`.

The runner skips the stages a run cannot serve (with one notice per run), orders them so a stage runs
after the ones it reads from, times each, keeps the training RNG and the model's mode untouched, and
collects the numbers and summary tables the stages produce.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..stages.base import Stage, StageContext, Summary
from .sink import WriteError

__all__ = ["StageContext", "StageResults", "order_stages", "run_stages"]


@dataclass
class StageResults:
    numbers: dict[str, float]
    summaries: dict[str, Summary]
    failed: dict[str, str] = field(default_factory=dict)  # stage → "ErrorType: message"


def order_stages(stages: list[Stage]) -> list[Stage]:
    """Config order, except that a stage moves after every listed stage it ``runs_after``."""
    remaining = list(stages)
    ordered: list[Stage] = []
    while remaining:
        names = {s.name for s in remaining}
        ready = next((s for s in remaining if not (set(s.runs_after) & (names - {s.name}))), remaining[0])
        ordered.append(ready)
        remaining.remove(ready)
    return ordered


def run_stages(stages: list[Stage], ctx: StageContext, strict: bool = False) -> StageResults:
    """Run each stage on ``ctx`` in eval mode, leaving the training RNG and mode untouched.

    Returns the numbers the stages recorded plus ``seconds/<stage>`` for each stage that ran, and the
    summary tables they returned (also written as ``<stage>/summary.json``). A stage that fails is
    reported in one notice, its traceback appended to ``errors.log``, and the others go on; with
    ``strict`` the failure is raised instead."""
    model = ctx.model
    was_training = model.training
    model.eval()
    summaries: dict[str, Summary] = {}
    failed: dict[str, str] = {}
    # cuDNN's autotuner times every algorithm for each new input shape; the stages bring many shapes (probe
    # batches, integrated-gradients steps, perturbed copies), each used a few times. They run on cuDNN's
    # heuristics instead (the all-conv recipe on an H200: the stages at epoch 0 took 3.2 s instead of 18.2 s,
    # the final trust check 7.2 s instead of 12.7 s); the training's shapes keep their tuned algorithms.
    autotune = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    bar = ctx.progress("analysis", len(stages)) if ctx.progress else contextlib.nullcontext(lambda n, what=None: None)
    try:
        with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []), bar as counted:
            advance = _saying(counted)
            for stage in order_stages(stages):
                advance(0, f"analysis · {stage.name}")
                ctx.status = lambda what, name=stage.name: advance(0, f"analysis · {name}: {what}")
                reason = stage.skip_reason(model, ctx.data)
                if reason is None and "training" in stage.needs and not ctx.during_training:
                    reason = "records during `interp train` only"
                if reason is None and "dynamics" in stage.needs:
                    if ctx.dynamics is None:
                        from ..stages.base import NEEDS

                        reason = NEEDS["dynamics"]
                    elif not ctx.dynamics.history.until(ctx.epoch):  # epoch 0: no training pass yet
                        advance(1)
                        continue
                if reason is None and "health" in stage.needs:
                    if ctx.health is None:
                        from ..stages.base import NEEDS

                        reason = NEEDS["health"]
                    elif not ctx.health.until(ctx.epoch):  # epoch 0: no training step yet
                        advance(1)
                        continue
                if reason:
                    if not stage.skip_noticed:  # once per run, not every epoch
                        ctx.notice(f"{stage.name}: skipped ({reason})")
                        stage.skip_noticed = True
                    advance(1)
                    continue
                start = time.perf_counter()
                ctx.stage = stage.name
                ctx.figures, ctx.kept = {}, {}
                try:
                    summary = stage.run(ctx)
                except WriteError:  # the disk, not the stage: the run stops
                    raise
                except Exception as exc:
                    if strict:
                        raise
                    failed[stage.name] = _report_failure(ctx, stage.name, exc)
                    advance(1)
                    continue
                if summary is not None:
                    summary.epoch = ctx.epoch if summary.epoch is None else summary.epoch
                    summaries[stage.name] = summary
                    ctx.save_json("summary.json", summary.to_json())
                ctx.write_record(summary)
                ctx.numbers[f"seconds/{stage.name}"] = round(time.perf_counter() - start, 4)
                advance(1)
            advance(0, "analysis")
    finally:
        model.train(was_training)
        torch.backends.cudnn.benchmark = autotune
    return StageResults(ctx.numbers, summaries, failed)


def _saying(advance: Callable[..., None]) -> Callable[..., None]:
    """``advance(n, what)`` for a reporter's bar, also when its ``advance`` takes the count alone (a
    reporter written before bars said what they were doing)."""
    import inspect

    try:
        parameters = inspect.signature(advance).parameters.values()
    except (TypeError, ValueError):
        return advance
    if len(parameters) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in parameters):
        return advance
    return lambda n, what=None: advance(n)


def _report_failure(ctx: StageContext, name: str, exc: Exception) -> str:
    import datetime
    import traceback

    what = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    text = "".join(traceback.format_exception(exc))
    ctx.sink.append("errors.log", f"--- {stamp} · stage {name} · epoch {ctx.epoch} ({ctx.folder})\n{text}\n")
    ctx.notice(f"{name}: failed at epoch {ctx.epoch} ({what}); training goes on, the traceback is in errors.log "
               "(analysis.strict: true stops instead)")
    return what
