"""``fit``: build a run from a config — data, model, optimiser, run folder — and train it with the
analysis, logging and checkpoint callbacks; ``load_model`` rebuilds a run's model from a checkpoint."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..analysis.api import Analysis
from ..attribution import check_methods
from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import Config, load_config, run_name, save_config
from ..data import Data, load_data, select_probe
from ..data.sources import check_sources
from ..errors import UserError
from ..models import build_model, check_model, logits_model
from ..run import Run
from ..stages import Summary, check_stages, default_stage_specs
from .callbacks import AnalysisCallback, CheckpointCallback, RunLogger, TrainingRecords, set_rng_state
from .distributed import Dist, setup
from .loop import Callback, Reporter, SilentReporter, Trainer
from .schedule import lr_schedule
from .speed import speed_for

__all__ = ["TrainResult", "fit", "load_model", "make_optimizer", "resolve_device"]


@dataclass
class TrainResult:
    run_dir: Path
    metrics: list[dict[str, Any]]
    best_epoch: int
    summaries: dict[str, Summary] = field(default_factory=dict)  # the stages' latest tables (trust …)
    failed: dict[str, str] = field(default_factory=dict)  # stages that failed: stage → "ErrorType: message"


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda, then mps, then cpu; a named device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"train.device is {name!r} but no CUDA device is available (use auto or cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"train.device is {name!r} but only {torch.cuda.device_count()} CUDA device(s) exist")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"train.device is {name!r} but MPS is not available (use auto or cpu)")
    return device


def make_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay,
                               nesterov=t.nesterov)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


def loss_function(data: Data) -> nn.Module:
    return nn.CrossEntropyLoss() if data.task == "classification" else nn.MSELoss()


def load_model(run: Run, checkpoint: str | Path = "best", device: torch.device | str = "cpu"):  # type: ignore[no-untyped-def]
    """Rebuild a run's model from its config.yaml and load a checkpoint (``best``, ``last`` or a path).

    Returns ``(config, model, data, checkpoint_state, checkpoint_path)``; the model is in eval mode.
    """
    cfg = load_config(run.config_path)
    path = run.checkpoints / f"{checkpoint}.pt" if str(checkpoint) in ("best", "last", "init") else Path(checkpoint)
    state = load_checkpoint(path)
    data = load_data(cfg.data, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.input_shape, data.num_outputs)
    _load_weights(model, state["model"], path, cfg)
    check_model(model, cfg.model.arch, data.normalize(data.eval_x[:2]), data.num_outputs)
    device = torch.device(device)
    return cfg, model.to(device).eval(), data.to(device), state, path


def _load_weights(model: nn.Module, weights: dict[str, Tensor], path: Path, cfg: Config) -> None:
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        detail = detail.split(":", 1)[-1].strip()[:200]
        raise UserError(f"checkpoint {path} does not fit the model in config.yaml "
                        f"(arch {cfg.model.arch}): {detail}") from None


def fit(cfg: Config, *, save_dir: Path | str = "save", name: str | None = None, resume: Path | str | None = None,
        reporter: Reporter | None = None) -> TrainResult:
    """Train ``cfg``'s model on its dataset, running the analysis stages at epoch 0 and after epochs.

    Writes ``save/<run>/`` (config.yaml, metrics.jsonl, checkpoints, TensorBoard events, stage figures).
    With ``resume`` (a run folder) training continues from its last.pt to ``cfg.train.epochs``, and every
    record of the run without its figure is drawn.
    """
    reporter = reporter or SilentReporter()
    check_sources(cfg.data)
    stages = check_stages(cfg.analysis.stages)
    methods = check_methods(cfg.analysis.methods)
    if cfg.analysis.stages is None or cfg.analysis.methods is None:  # the saved config names what ran
        cfg = cfg.model_copy(update={"analysis": cfg.analysis.model_copy(update={
            "stages": cfg.analysis.stages if cfg.analysis.stages is not None else default_stage_specs(),
            "methods": list(methods)})})
    device = resolve_device(cfg.train.device)
    dist = setup(device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    if not dist.main:
        reporter = SilentReporter()  # rank 0 speaks for all
    try:
        return _fit(cfg, stages, device, dist, Path(save_dir), name, resume, reporter)
    finally:
        if dist.enabled:
            from torch import distributed as torch_distributed

            torch_distributed.destroy_process_group()


def _on_main(dist: Dist, work: Callable[[], Any]) -> Any:
    """``work()`` on rank 0 only; its (picklable) result, or its failure as a UserError, on every rank."""
    if not dist.enabled:
        return work()
    if dist.main:
        try:
            result = work()
        except BaseException as exc:
            dist.broadcast(("error", str(exc) if isinstance(exc, UserError) else f"rank 0 failed: {exc!r}"))
            raise
        dist.broadcast(("ok", result))
        return result
    kind, value = dist.broadcast(None)
    if kind == "error":
        raise UserError(value)
    return value


def _fit(cfg: Config, stages: list[Any], device: torch.device, dist: Dist, save_dir: Path, name: str | None,
         resume: Path | str | None, reporter: Reporter) -> TrainResult:
    resumed: Run | None = None
    resume_state: dict[str, Any] | None = None

    def check_resume() -> bool:
        nonlocal resumed, resume_state
        resumed = Run.open(Path(resume))  # type: ignore[arg-type]  # clear error for a missing run
        resumed.lock()  # one process per run
        try:
            resume_state = _resume_state(resumed, cfg, reporter)
        except BaseException:
            resumed.close()
            raise
        if resume_state is None:  # nothing to do: nothing is written
            resumed.close()
        return resume_state is not None

    if resume is not None:
        if not _on_main(dist, check_resume):  # nothing to train: only figures an interruption left undrawn
            from ..analysis.views import draw_figures, waiting_figures

            if dist.main and waiting_figures(Path(resume)):
                draw_figures(resume, missing_only=True)
            best = Path(resume) / "checkpoints" / "best.pt"
            best_epoch = int(load_checkpoint(best).get("epoch", 0)) if best.is_file() else 0
            return TrainResult(run_dir=Path(resume), metrics=Run(Path(resume)).read_metrics(), best_epoch=best_epoch)
        if resume_state is None:  # the other ranks read what rank 0 checked (and repaired)
            resume_state = load_checkpoint(Path(resume) / "checkpoints" / "last.pt")

    return _fit_with(cfg, stages, device, dist, save_dir, name, resume, reporter, resumed, resume_state)


def _fit_with(cfg: Config, stages: list[Any], device: torch.device, dist: Dist, save_dir: Path, name: str | None,
              resume: Path | str | None, reporter: Reporter, resumed: Run | None,
              resume_state: dict[str, Any] | None) -> TrainResult:
    torch.manual_seed(cfg.seed)
    data = load_data(cfg.data, cfg.seed, progress=reporter.progress, notice=reporter.notice).to(device)
    probe = select_probe(data, cfg.analysis.probe_per_class, cfg.seed)
    model = build_model(cfg.model, data.input_shape, data.num_outputs).to(device)
    check_model(model, cfg.model.arch, probe.x, data.num_outputs)
    generator = torch.Generator().manual_seed(cfg.seed)
    # checked before anything is written; moves a conv net to channels_last when chosen
    speed = speed_for(model, device, cfg.train.precision, cfg.train.channels_last, cfg.data.augment, data.is_image)
    analyzed = logits_model(model, probe.x)
    for stage in stages:
        stage.prepare(analyzed, data)

    created: Run | None = None

    def make_run() -> str:
        nonlocal created
        created, moved = Run.create(save_dir, name or run_name(cfg), exact=name is not None)
        created.lock()
        if moved:
            reporter.notice(moved)
        save_config(cfg.model_copy(update={"name": created.path.name}), created.config_path)  # the real name
        save_checkpoint({"model": model.state_dict(), "epoch": 0}, created.checkpoints / "init.pt")
        return str(created.path)

    if resume_state is not None:
        start_epoch = int(resume_state["epoch"])
        run = resumed if resumed is not None else Run(Path(resume))  # type: ignore[arg-type]
        last = run.checkpoints / "last.pt"
        _load_weights(model, resume_state["model"], last, cfg)
        resumed_optimizer = make_optimizer(cfg, model)
        optimizer: torch.optim.Optimizer | Callable[[], torch.optim.Optimizer] = resumed_optimizer
        try:
            resumed_optimizer.load_state_dict(resume_state["optimizer"])
            set_rng_state(resume_state["rng"], generator)
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            run.close()
            raise UserError(f"checkpoint {last}: its optimizer or random state does not fit this run "
                            f"({type(exc).__name__}: {' '.join(str(exc).split())[:120]})") from None
        best = resume_state.get("best")
        if dist.main:
            run.purge_from(start_epoch + 1)
            run.keep_metrics_through(start_epoch)
            save_config(cfg.model_copy(update={"name": run.path.name}), run.config_path)
        reporter.notice(f"resuming {run.path} after epoch {start_epoch}")
    else:
        start_epoch = 0
        optimizer = lambda: make_optimizer(cfg, model)  # noqa: E731 — made after epoch 0's analysis (see Trainer)
        run_dir = _on_main(dist, make_run)
        run = created if created is not None else Run(Path(run_dir))
        best = None

    drawing = bool(stages) and dist.main and cfg.analysis.drawing_worker
    run.drawing_worker = drawing
    if drawing:
        run.sink.start_drawing()
    init_path = run.checkpoints / "init.pt"
    initial_state = load_checkpoint(init_path, map_location=device)["model"] \
        if dist.main and init_path.exists() else None
    analysis = Analysis(stages, run.sink, notice=reporter.notice, initial_state=initial_state,
                        strict=cfg.analysis.strict, methods=cfg.analysis.methods, progress=reporter.progress)
    analysis.dynamics = dynamics = _dynamics(stages, data, cfg.seed)
    analysis.health = health = _health(stages, cfg.train.compile)
    analysis.run_folder = run.path
    if health is not None and not health.layers:
        reporter.notice("health: with train.compile the layers' outputs are not recorded (a compiled model does not "
                        "call forward hooks added to it); gradients and update ratios are")
    checkpoints = CheckpointCallback(run, cfg.model_dump(mode="json"), best)
    callbacks: list[Callback] = [TrainingRecords(run, cfg.analysis.snapshots),
                                 AnalysisCallback(analysis, cfg.analysis.every), RunLogger(run),
                                 checkpoints] if dist.main else []  # rank 0 writes the run; the others only train
    if speed.scaler is not None and resume_state is not None and isinstance(resume_state.get("scaler"), dict):
        speed.scaler.load_state_dict(resume_state["scaler"])
    trained: nn.Module = model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.train.compile:
        trained = torch.compile(trained)  # type: ignore[assignment]
    steps_per_epoch = -(-len(data.train_x) // cfg.data.batch_size)
    lr_at = lr_schedule(cfg.train.schedule, cfg.train.lr, cfg.train.epochs * steps_per_epoch,
                        round(cfg.train.warmup_epochs * steps_per_epoch)) if cfg.train.schedule != "constant" else None
    trainer = Trainer(model, data, probe, optimizer, loss_function(data), generator, epochs=cfg.train.epochs,
                      batch_size=cfg.data.batch_size, eval_batch_size=cfg.data.eval_batch_size,
                      callbacks=callbacks, reporter=reporter, analyzed=analyzed,
                      features_layer=cfg.analysis.features_layer, on_nan=cfg.train.on_nan, dist=dist, trained=trained,
                      speed=speed, lr_at=lr_at, dynamics=dynamics, health=health)
    try:
        with _cores_beside_worker(device, drawing and not dist.enabled):
            trainer.fit(start_epoch, resuming=resume_state is not None)
        if dist.main and stages:  # every figure kind on one colour scale, and any figure still missing
            from ..analysis.views import draw_run

            draw_run(run.path, run.sink, missing_only=True)
            run.sink.wait()
        dist.barrier()  # the others wait for rank 0's last stages and checkpoint
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: say how to go on
        try:  # a second Ctrl-C while the run is closed ends the process at once
            previous = signal.signal(signal.SIGINT, signal.SIG_DFL)
        except ValueError:  # not the main thread: signals are not ours to change
            previous = None
        try:
            run.close(finish=False)  # the figures already drawn are kept; the worker stops
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        resumable = (run.checkpoints / "last.pt").is_file()
        from ..analysis.views import waiting_figures

        exc.waiting = waiting_figures(run.path) if dist.main else 0  # type: ignore[attr-defined]
        exc.run = str(run.path)  # type: ignore[attr-defined]
        exc.resume = str(run.path) if resumable else None  # type: ignore[attr-defined]
        exc.detail = f"no epoch had finished; {run.path} holds what was written"  # type: ignore[attr-defined]
        raise
    finally:
        run.close()
    if analysis.failed:
        reporter.notice(f"stages that failed (tracebacks in {run.path / 'errors.log'}): "
                        + "; ".join(f"{name}: {why}" for name, why in analysis.failed.items()))
    return TrainResult(run_dir=run.path, metrics=run.read_metrics(), best_epoch=(checkpoints.best or {}).get("epoch", 0),
                       summaries=analysis.summaries, failed=dict(analysis.failed))


def _dynamics(stages: list[Any], data: Data, seed: int) -> Any:
    """The per-example dynamics recorder when a stage reads them (``dataset_map``) on a classification task."""
    wanted = [stage for stage in stages if "dynamics" in stage.needs]
    if not wanted or data.task != "classification" or not len(data.train_y):
        return None
    from ..analysis.dynamics import CELLS, Dynamics

    cells = min(getattr(stage.options, "cells", CELLS) for stage in wanted)
    return Dynamics(data.train_y, len(data.classes), cells=cells, seed=seed)


def _health(stages: list[Any], compiled: bool) -> Any:
    """The layers' health recorder when a stage reads it (``health``), sampling as often as the most eager asks;
    under torch.compile, the optimiser's steps only."""
    wanted = [stage for stage in stages if "health" in stage.needs]
    if not wanted:
        return None
    from ..analysis.health import Health

    return Health(every=min(stage.options.every for stage in wanted), bins=wanted[0].options.bins, layers=not compiled)


# What a resumed run may change; everything else in the config must match the checkpoint's.
_MAY_CHANGE = ("train.epochs", "train.device", "train.on_nan", "data.root", "data.download", "data.eval_batch_size",
               "analysis.", "animate.", "name")


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def _resume_state(run: Run, cfg: Config, reporter: Reporter) -> dict[str, Any] | None:
    """last.pt of ``run``, checked against ``cfg`` before anything is written; None when ``cfg`` asks for
    no more epochs than the run has. Also removes temporary files a killed process left, and repairs a
    best.pt that a crash left behind last.pt."""
    from ..checkpoint import check_state, remove_stale_temporaries

    for tmp in remove_stale_temporaries(run.checkpoints):
        reporter.notice(f"removed {tmp} (left by an interrupted write)")
    last = run.checkpoints / "last.pt"
    state = load_checkpoint(last)
    check_state(state, last, ("epoch", "optimizer", "rng", "config"))
    saved, wanted = _flatten(state["config"]), _flatten(cfg.model_dump(mode="json"))
    for key, old in saved.items():
        if key.startswith(_MAY_CHANGE) or key not in wanted or wanted[key] == old:
            continue
        raise UserError(f"--resume: {key} is {wanted[key]!r} but the run was trained with {old!r}; a resumed run "
                        "continues the same training (start a new run to change it)")
    done = int(state["epoch"])
    if done >= cfg.train.epochs:
        reporter.notice(f"{run.path} already has {done} epochs (train.epochs is {cfg.train.epochs}); nothing to do "
                        "— raise it with --set train.epochs=N")
        return None
    best = state.get("best")
    best_path = run.checkpoints / "best.pt"
    if isinstance(best, dict) and best.get("epoch") == done:
        held = load_checkpoint(best_path).get("epoch") if best_path.is_file() else None
        if held != done:  # the crash came between the two writes: last.pt is the best epoch
            save_checkpoint(state, best_path)
            reporter.notice(f"repaired {best_path}: it now holds epoch {done}, the best one, as last.pt says")
    return state


@contextlib.contextmanager
def _cores_beside_worker(device: torch.device, worker: bool) -> Iterator[None]:
    """Training on the CPU beside the drawing worker leaves it one core: torch's threads would otherwise
    wait on each other whenever the worker draws (on 2 cores the attribution passes ran 2–4× slower with
    2 threads than with 1). Not when the user chose the threads (OMP_NUM_THREADS or torch.set_num_threads)."""
    from ..analysis.drawing import usable_cores

    threads = torch.get_num_threads()
    cores = usable_cores()
    if not worker or device.type != "cpu" or "OMP_NUM_THREADS" in os.environ or threads < cores or cores < 2:
        yield
        return
    torch.set_num_threads(cores - 1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
