"""Training: epochs over in-memory tensors, evaluation, checkpoints, resume, and the analysis stages."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .checkpoint import load_checkpoint, save_checkpoint
from .config import Config, load_config, save_config
from .data import Data, load_data, select_probe
from .data.sources import check_sources
from .errors import UserError
from .models import build_model
from .run import Run

__all__ = ["Reporter", "TrainResult", "evaluate", "fit", "load_model", "resolve_device", "train_epoch"]


class Reporter(Protocol):
    """Where training reports progress. The CLI passes a rich one; the default says nothing."""

    def progress(self, description: str, total: int) -> contextlib.AbstractContextManager[Callable[[int], None]]:
        ...

    def epoch(self, row: dict[str, Any], epochs: int) -> None:
        ...

    def notice(self, message: str) -> None:
        ...


class SilentReporter:
    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[[int], None]]:
        yield lambda n: None

    def epoch(self, row: dict[str, Any], epochs: int) -> None:
        pass

    def notice(self, message: str) -> None:
        pass


@dataclass
class TrainResult:
    run_dir: Path
    metrics: list[dict[str, Any]]
    best_epoch: int
    summaries: dict[str, Any] = field(default_factory=dict)  # stage summaries (the trust table …)


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
        return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)


def loss_function(data: Data) -> nn.Module:
    return nn.CrossEntropyLoss() if data.task == "classification" else nn.MSELoss()


def train_epoch(model: nn.Module, data: Data, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
                batch_size: int, generator: torch.Generator, advance: Callable[[int], None] = lambda n: None,
                on_step: Callable[[], None] | None = None) -> tuple[float, float | None]:
    """One pass over the training tensors in a random order; returns (mean loss, accuracy or None)."""
    model.train()
    n = len(data.train_x)
    order = torch.randperm(n, generator=generator).to(data.device)
    losses, predictions = [], []  # kept on the device; summed once at the end (no per-step sync)
    for start in range(0, n, batch_size):
        index = order[start:start + batch_size]
        x = data.normalise(data.train_x[index])
        y = data.train_y[index]
        logits = model(x)
        loss = loss_fn(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        predictions.append(logits.detach())
        if on_step is not None:
            on_step()
        advance(1)
    sizes = torch.tensor([min(batch_size, n - s) for s in range(0, n, batch_size)], device=data.device)
    mean_loss = float((torch.stack(losses) * sizes).sum()) / n
    if data.task != "classification":
        return mean_loss, None
    predicted = torch.cat([p.argmax(dim=1) for p in predictions])
    return mean_loss, int((predicted == data.train_y[order]).sum()) / n


@torch.no_grad()
def evaluate(model: nn.Module, data: Data, loss_fn: nn.Module, batch_size: int,
             advance: Callable[[int], None] = lambda n: None,
             features: list[Tensor] | None = None) -> tuple[float, float | None, Tensor]:
    """Mean loss, accuracy (None for regression) and the logits of the whole evaluation set.

    Given a ``features`` list (and a model with ``forward_features``), the penultimate features of every
    batch are appended to it from the same forward pass."""
    model.eval()
    outputs = []
    total = 0.0
    keep = features is not None and hasattr(model, "forward_features")
    for x, y in data.eval_batches(batch_size):
        if keep:
            logits, batch_features = model.forward_features(x)  # type: ignore[operator]
            features.append(batch_features)  # type: ignore[union-attr]
        else:
            logits = model(x)
        total += float(loss_fn(logits, y)) * len(y)
        outputs.append(logits)
        advance(1)
    logits = torch.cat(outputs)
    n = len(data.eval_y)
    accuracy = int((logits.argmax(dim=1) == data.eval_y).sum()) / n if data.task == "classification" else None
    return total / n, accuracy, logits


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "shuffle": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _is_better(row: dict[str, Any], best: dict[str, Any] | None) -> bool:
    if best is None:
        return True
    if row["eval_accuracy"] is not None:
        return (row["eval_accuracy"], -row["eval_loss"]) > (best["eval_accuracy"], -best["eval_loss"])
    return bool(row["eval_loss"] < best["eval_loss"])


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
    With ``resume`` (a run folder) training continues from its last.pt to ``cfg.train.epochs``.
    """
    from .stages import Stage, StageContext, build_stages, run_stages

    reporter = reporter or SilentReporter()
    check_sources(cfg.data)
    stages = build_stages(cfg.analysis.stages)
    device = resolve_device(cfg.train.device)

    resume_state = None
    if resume is not None:
        run_path = Path(resume)
        Run.open(run_path)  # clear error for a missing run
        resume_state = load_checkpoint(run_path / "checkpoints" / "last.pt")

    torch.manual_seed(cfg.seed)
    data = load_data(cfg.data, cfg.seed).to(device)
    model = build_model(cfg.model, data.input_shape, data.num_outputs).to(device)
    optimizer = make_optimizer(cfg, model)
    loss_fn = loss_function(data)
    generator = torch.Generator().manual_seed(cfg.seed)
    probe = select_probe(data, cfg.analysis.probe_per_class, cfg.seed)
    for stage in stages:
        stage.prepare(model, data)

    if resume_state is not None:
        start_epoch = int(resume_state["epoch"])
        run = Run.open(Path(str(resume)), purge_step=start_epoch + 1)
        _load_weights(model, resume_state["model"], run.checkpoints / "last.pt", cfg)
        optimizer.load_state_dict(resume_state["optimizer"])
        _set_rng_state(resume_state["rng"], generator)
        best = resume_state.get("best")
        run.keep_metrics_through(start_epoch)
        save_config(cfg, run.config_path)
        if start_epoch >= cfg.train.epochs:
            reporter.notice(f"{run.path} already has {start_epoch} epochs (train.epochs is {cfg.train.epochs}); "
                            "nothing to do — raise it with --set train.epochs=N")
        else:
            reporter.notice(f"resuming {run.path} after epoch {start_epoch}")
    else:
        start_epoch = 0
        run, moved = Run.create(Path(save_dir), name or cfg.name, exact=name is not None)
        if moved:
            reporter.notice(moved)
        save_config(cfg, run.config_path)
        best = None

    init_path = run.checkpoints / "init.pt"
    if not init_path.exists() and resume_state is None:
        save_checkpoint({"model": model.state_dict(), "epoch": 0}, init_path)
    initial_state = load_checkpoint(init_path, map_location=device)["model"] if init_path.exists() else None

    eval_steps = -(-len(data.eval_x) // cfg.data.eval_batch_size)
    train_steps = -(-len(data.train_x) // cfg.data.batch_size)
    step_hooks = [s for s in stages if type(s).on_step is not Stage.on_step]
    global_step = start_epoch * train_steps

    def on_step() -> None:
        nonlocal global_step
        global_step += 1
        for stage in step_hooks:
            stage.on_step(model, global_step, epoch, run.path)

    wants_features = any(stage.name == "embeddings" for stage in stages)

    def features_list() -> list[Tensor] | None:
        return [] if wants_features else None  # filled by evaluate() from its own forward pass

    def analyse(epoch: int, logits: Tensor, features: list[Tensor] | None) -> dict[str, float]:
        ctx = StageContext(model=model, epoch=epoch, final=epoch == cfg.train.epochs, device=device, data=data,
                           probe=probe, writer=run.writer, folder=run.epoch_dir(epoch), initial_state=initial_state,
                           notice=reporter.notice, eval_batch_size=cfg.data.eval_batch_size, _eval_logits=logits,
                           _eval_features=torch.cat(features) if features else None)
        numbers = run_stages(stages, ctx)
        summaries.update(ctx.shared.get("summaries", {}))
        return numbers

    summaries: dict[str, Any] = {}
    writer = run.writer
    epoch = start_epoch
    try:
        if resume_state is None:
            features = features_list()
            with reporter.progress("evaluation", eval_steps) as advance:
                eval_loss, eval_acc, logits = evaluate(model, data, loss_fn, cfg.data.eval_batch_size, advance,
                                                       features)
            row: dict[str, Any] = {"epoch": 0, "train_loss": None, "eval_loss": eval_loss, "train_accuracy": None,
                                   "eval_accuracy": eval_acc, "seconds": 0.0}
            _log_scalars(writer, row, None)
            row.update(analyse(0, logits, features))
            run.append_metrics(row)
            reporter.epoch(row, cfg.train.epochs)
            best = _checkpoint(run, model, optimizer, cfg, 0, generator, row, best)

        for epoch in range(start_epoch + 1, cfg.train.epochs + 1):
            started = time.perf_counter()
            with reporter.progress("training", train_steps) as advance:
                train_loss, train_acc = train_epoch(model, data, optimizer, loss_fn, cfg.data.batch_size, generator,
                                                    advance, on_step if step_hooks else None)
            features = features_list()
            with reporter.progress("evaluation", eval_steps) as advance:
                eval_loss, eval_acc, logits = evaluate(model, data, loss_fn, cfg.data.eval_batch_size, advance,
                                                       features)
            row = {"epoch": epoch, "train_loss": train_loss, "eval_loss": eval_loss, "train_accuracy": train_acc,
                   "eval_accuracy": eval_acc, "seconds": round(time.perf_counter() - started, 3)}
            _log_scalars(writer, row, optimizer.param_groups[0]["lr"])
            if epoch % cfg.analysis.every == 0 or epoch == cfg.train.epochs:
                row.update(analyse(epoch, logits, features))
            run.append_metrics(row)
            reporter.epoch(row, cfg.train.epochs)
            best = _checkpoint(run, model, optimizer, cfg, epoch, generator, row, best)
        for stage in stages:
            stage.on_train_end(model, run.path, reporter.notice)
    finally:
        run.close()
    return TrainResult(run_dir=run.path, metrics=run.read_metrics(), best_epoch=(best or {}).get("epoch", 0),
                       summaries=summaries)


def _log_scalars(writer: Any, row: dict[str, Any], lr: float | None) -> None:
    epoch = row["epoch"]
    for tag, key in (("loss/train", "train_loss"), ("loss/eval", "eval_loss"),
                     ("accuracy/train", "train_accuracy"), ("accuracy/eval", "eval_accuracy")):
        if row[key] is not None:
            writer.add_scalar(tag, row[key], epoch)
    if lr is not None:
        writer.add_scalar("lr", lr, epoch)


def _checkpoint(run: Run, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: Config, epoch: int,
                generator: torch.Generator, row: dict[str, Any], best: dict[str, Any] | None) -> dict[str, Any] | None:
    summary = {"epoch": epoch, "eval_loss": row["eval_loss"], "eval_accuracy": row["eval_accuracy"]}
    improved = _is_better(summary, best)
    best = summary if improved else best
    state = {
        "format": 1,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": _rng_state(generator),  # the stages run under fork_rng, so this is training's own state
        "config": cfg.model_dump(mode="json"),
        "metrics": summary,
        "best": best,
    }
    save_checkpoint(state, run.checkpoints / "last.pt")
    if improved:
        save_checkpoint(state, run.checkpoints / "best.pt")
    return best
