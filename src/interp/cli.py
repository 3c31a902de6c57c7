"""The ``interp`` command line: thin Typer commands that parse, then call one library function.

torch and the rest of the library are imported inside the commands, so ``interp --help`` is fast.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from .errors import UserError

__all__ = ["app", "main"]

app = typer.Typer(
    name="interp",
    help="Train neural networks and see what happens inside them.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
)

F = TypeVar("F", bound=Callable[..., Any])

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (default: built-in defaults, "
                                                "the same as configs/default.yaml).", show_default=False)]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", metavar="KEY.PATH=VALUE",
                                                  help="Override a config value; the value is read as YAML, "
                                                  "e.g. --set model.hidden=[256,64]. Repeatable.")]
NameOpt = Annotated[str | None, typer.Option("--name", "-n", help="Run folder name (default: the config's name; "
                                             "an existing one gets -2, -3 …).", show_default=False)]
SaveDirOpt = Annotated[Path, typer.Option("--save-dir", help="Folder that holds the runs.")]


def _user_errors(func: F) -> F:
    """One line on stderr and an exit code instead of a traceback: 2 for a UserError or a file that cannot
    be written, 3 for a non-finite loss, 130 for Ctrl-C and 143 for SIGTERM (with the resume command
    when there is something to resume)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from .errors import NonFiniteLoss
        from .interrupts import exit_code, terminate_as_exception

        def say(line: str) -> None:
            if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for every rank
                typer.echo(line, err=True)

        import threading

        def quiet(args: Any) -> None:  # a thread that could not write (TensorBoard's): the run names the file
            if not issubclass(args.exc_type, OSError):
                previous(args)

        previous, threading.excepthook = threading.excepthook, quiet
        try:
            with terminate_as_exception():
                return func(*args, **kwargs)
        except UserError as exc:
            say(f"error: {exc}")
            raise typer.Exit(2) from None
        except NonFiniteLoss as exc:
            say(f"error: {exc}")
            raise typer.Exit(3) from None
        except OSError as exc:  # a full disk, a read-only or missing folder …
            where = f"{exc.filename}: " if exc.filename else ""
            say(f"error: {where}{exc.strerror or exc} (check the disk's free space and the folder's permissions)")
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            resume = getattr(exc, "resume", None)
            what = "stopped (SIGTERM)" if exit_code(exc) == 143 else "interrupted"
            waiting = getattr(exc, "waiting", 0)
            figures = f"; {waiting} figure{'s' * (waiting != 1)} from saved records not drawn yet: " \
                f"interp draw {exc.run} draws them" if waiting else ""  # type: ignore[attr-defined]
            if resume:
                say(f"{what}; the last finished epoch is saved: continue with interp train --resume {resume}"
                    f"{figures}")
            else:
                say(f"{what}; {getattr(exc, 'detail', 'the command stopped before it finished')}{figures}")
            raise typer.Exit(exit_code(exc)) from None
        finally:
            threading.excepthook = previous

    return wrapper  # type: ignore[return-value]


class RichReporter:
    """Progress bars and per-epoch lines on the terminal."""

    def __init__(self, quiet: bool = False) -> None:
        from rich.console import Console

        self.console = Console(highlight=False, quiet=quiet)

    @contextlib.contextmanager
    def progress(self, description: str, total: int) -> Iterator[Callable[..., None]]:
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

        with Progress(TextColumn("{task.description:<10}"), BarColumn(bar_width=40), TaskProgressColumn(),
                      TimeElapsedColumn(), console=self.console) as bar:
            task = bar.add_task(description, total=total)
            yield lambda n, what=None: bar.update(task, advance=n, **({"description": what} if what else {}))

    def epoch(self, row: dict[str, Any], epochs: int) -> None:
        parts = [f"epoch {row['epoch']}/{epochs}"]
        for label, key in (("train loss", "train_loss"), ("eval loss", "eval_loss")):
            if row.get(key) is not None:
                parts.append(f"{label} {row[key]:.4f}")
        for label, key in (("train acc", "train_accuracy"), ("eval acc", "eval_accuracy")):
            if row.get(key) is not None:
                parts.append(f"{label} {row[key]:.2%}")
        parts.append(f"{row['seconds']:.1f} s" if row["epoch"] else "before training")
        self.console.print(" · ".join(parts), soft_wrap=True)

    def notice(self, message: str) -> None:
        self.console.print(message, markup=False, soft_wrap=True)


@app.command()
@_user_errors
def train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    name: NameOpt = None,
    save_dir: SaveDirOpt = Path("save"),
    resume: Annotated[Path | None, typer.Option("--resume", help="Continue a run folder from its last.pt to "
                                                "train.epochs (use --set train.epochs=N to go further).",
                                                show_default=False)] = None,
) -> None:
    """Train a model and run the analysis stages at epoch 0 and after epochs; results go to save/<run>/."""
    config, save_dir, resume = _home(config), save_dir.expanduser(), _home(resume)
    from .attribution import check_methods
    from .config import load_config
    from .data.sources import check_sources
    from .stages import check_stages

    if resume is not None:
        if config is not None:
            raise UserError("--resume uses the run's own config.yaml; drop -c (use --set to change values)")
        config = resume / "config.yaml"
        if not config.is_file():
            what = ("is not a run folder (no config.yaml)" if resume.is_dir() else
                    "is a file, not a run folder" if resume.exists() else "does not exist")
            raise UserError(f"run {resume} {what}")
    overrides = [item for item in set_ or [] if not _STAGE_OPTION.match(item)]
    cfg = load_config(config, overrides)
    cfg = _set_stage_options(cfg, [item for item in set_ or [] if _STAGE_OPTION.match(item)])
    source = f"{config or 'default config'}{' with --set' if set_ else ''}"
    check_stages(cfg.analysis.stages, f"{source}: analysis.stages")
    check_methods(cfg.analysis.methods, f"{source}: analysis.methods")
    check_sources(cfg.data)  # before torch is imported: an offline machine hears about it at once

    from .train import fit

    settle_collector()
    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 prints
    reporter = RichReporter(quiet=not main_rank)
    result = fit(cfg, save_dir=save_dir, name=name, resume=resume, reporter=reporter)
    if not main_rank:
        return
    _print_summaries(reporter, result.summaries)
    reporter.notice(f"run saved in {result.run_dir} (best epoch {result.best_epoch}); "
                    f"view it with: tensorboard --logdir {result.run_dir.parent}")


@app.command()
@_user_errors
def analyze(
    run: Annotated[Path, typer.Argument(help="A run folder, e.g. save/mnist-mlp.")],
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best, last, or a path to a .pt file.")] = "best",
    stage: Annotated[list[str] | None, typer.Option("--stage", help="Run only this stage (repeatable; "
                                                    "default: the run's configured stages).")] = None,
) -> None:
    """Run the analysis stages again on a saved checkpoint; output goes to save/<run>/analysis/<checkpoint>/."""
    run = run.expanduser()
    checkpoint = str(Path(checkpoint).expanduser()) if checkpoint not in ("best", "last", "init") else checkpoint
    from .analyze import analyze as analyze_run

    settle_collector()
    reporter = RichReporter()
    result = analyze_run(run, checkpoint=checkpoint, stages=stage, notice=reporter.notice)
    _print_summaries(reporter, result.summaries)
    reporter.notice(f"analysis written to {result.folder}")


@app.command()
@_user_errors
def draw(
    run: Annotated[Path, typer.Argument(help="A run folder, e.g. save/mnist-mlp.")],
    stage: Annotated[list[str] | None, typer.Option("--stage", help="Only this stage's figures (repeatable).",
                                                    show_default=False)] = None,
    epoch: Annotated[list[int] | None, typer.Option("--epoch", help="Only this epoch's figures (repeatable).",
                                                    show_default=False)] = None,
    missing: Annotated[bool, typer.Option("--missing", help="Only figures without a PNG yet (and every figure "
                                          "kind drawn on one colour scale for the run).")] = False,
) -> None:
    """Draw a run's figures again from its records (the ones an interruption left out, a changed view);
    attribution maps, Grad-CAM, neurons and activations on one colour scale for the whole run."""
    run = run.expanduser()
    from .analysis.views import draw_figures

    drawn, failed = draw_figures(run, stages=stage, epochs=epoch, missing_only=missing)
    for line in failed:
        typer.echo(f"not drawn: {line}", err=True)
    typer.echo(f"drew {drawn} figure{'s' * (drawn != 1)} in {run}" + (f"; {len(failed)} failed" if failed else ""))
    if failed:
        raise typer.Exit(1)


@app.command()
@_user_errors
def animate(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config (default: the bundled "
                                                "configs/rings.yaml).", show_default=False)] = None,
    set_: SetOpt = None,
    hidden: Annotated[list[str] | None, typer.Option("--hidden", help="Hidden layer sizes of one panel, "
                                                     "e.g. 3,2 (repeatable; default: the config's presets).",
                                                     show_default=False)] = None,
    frames: Annotated[int | None, typer.Option("--frames", help="Frames (frame 0 is the untrained net).",
                                               show_default=False)] = None,
    format_: Annotated[str | None, typer.Option("--format", help="gif, or mp4 (written next to the gif).",
                                                show_default=False)] = None,
    name: NameOpt = None,
    save_dir: SaveDirOpt = Path("save"),
) -> None:
    """Animate toy networks learning (rings: hidden space, warped grid, decision line; polynomial: the fit)."""
    config, save_dir = _home(config), save_dir.expanduser()
    from .animate import animate_config
    from .config import bundled_config, load_config

    overrides = list(set_ or [])
    if config is None:
        config = bundled_config("rings")
    if hidden:
        shapes = [_parse_hidden(h) for h in hidden]
        overrides.append(f"animate.hidden={shapes}")
    if frames is not None:
        overrides.append(f"animate.frames={frames}")
    if format_ is not None:
        overrides.append(f"animate.format={format_}")
    cfg = load_config(config, overrides)
    reporter = RichReporter()
    outputs = animate_config(cfg, save_dir=save_dir, name=name, reporter=reporter)
    for path in outputs:
        reporter.notice(f"wrote {path}")


@app.command()
@_user_errors
def report(run: Annotated[Path, typer.Argument(help="A run folder, e.g. save/mnist-mlp.")]) -> None:
    """Write a static HTML page of a run (metrics, every stage's figures, animations): save/<run>/report/."""
    run = run.expanduser()
    from .report import build_report

    path = build_report(run)
    typer.echo(f"wrote {path}")


@app.command()
@_user_errors
def examples(
    run: Annotated[Path, typer.Argument(help="A run folder, e.g. save/mnist-mlp.")],
    label_issues: Annotated[bool, typer.Option("--label-issues", help="Training examples whose given label the "
                                               "training disagreed with most (the default).")] = False,
    hard: Annotated[bool, typer.Option("--hard", help="Hard-to-learn training examples, least confident first.")] = False,
    ambiguous: Annotated[bool, typer.Option("--ambiguous", help="Ambiguous training examples, most variable first.")] = False,
    forgotten: Annotated[bool, typer.Option("--forgotten", help="Training examples forgotten most often.")] = False,
    top_losses: Annotated[bool, typer.Option("--top-losses", help="Evaluation images with the highest loss.")] = False,
    influence: Annotated[int | None, typer.Option("--influence", metavar="EVAL_INDEX", help="The training examples "
                         "that most helped (proponents) and hurt (opponents) this evaluation image, by TracIn over "
                         "the run's per-epoch checkpoints.", show_default=False)] = None,
    self_influence: Annotated[bool, typer.Option("--self-influence", help="Training examples by self-influence "
                              "(TracIn of each on itself), highest first.")] = False,
    raw: Annotated[bool, typer.Option("--raw", help="With --influence: rank by the raw TracIn score (favours "
                                      "high-loss examples) instead of the gradient cosine.")] = False,
    top: Annotated[int, typer.Option("--top", min=0, help="How many (0: all).")] = 20,
    epoch: Annotated[int | None, typer.Option("--epoch", help="From this analysis epoch's record (default: the "
                                              "latest).", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="A JSON list instead of a table (with --influence or "
                                          "--self-influence: one object).")] = False,
) -> None:
    """List examples from a run's dataset map: likely label issues, hard, ambiguous, forgotten, or top losses;
    or by influence: an evaluation image's proponents and opponents, or every training example's self-influence."""
    import json

    from .analysis.examples import KINDS, ranked_examples

    asked = [kind for kind, on in (("label_issues", label_issues), ("hard", hard), ("ambiguous", ambiguous),
                                   ("forgotten", forgotten), ("top_losses", top_losses),
                                   ("influence", influence is not None), ("self_influence", self_influence)) if on]
    if len(asked) > 1:
        raise UserError("give one of --label-issues, --hard, --ambiguous, --forgotten, --top-losses, --influence, "
                        "--self-influence")
    if raw and influence is None:
        raise UserError("--raw goes with --influence EVAL_INDEX")
    kind = asked[0] if asked else "label_issues"
    if kind in ("influence", "self_influence"):
        if epoch is not None:
            raise UserError("--epoch goes with the dataset map's rankings; influence uses the run's last checkpoint")
        _influence_examples(run.expanduser(), influence, top, raw, as_json)
        return
    rows, about = ranked_examples(run.expanduser(), kind, top or None, epoch)
    if as_json:
        typer.echo(json.dumps(rows, allow_nan=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{kind.replace('_', ' ')}: {len(rows)} of {about['count']:,} {about['split']} examples, "
                        f"epoch {about['epoch']}", caption=f"score = {KINDS[kind][1]}")
    keys = [k for k in ("index", "label_name", "predicted_name", "score", "confidence", "variability", "forgetting",
                        "aum", "flagged") if rows and k in rows[0]]
    short = {"predicted_name": "pred", "confidence": "conf", "variability": "var", "forgetting": "forgot"}
    for key in keys:
        table.add_column(short.get(key, key.removesuffix("_name")), justify="left" if key.endswith("_name") else "right")
    for row in rows:
        table.add_row(*[_cell(row[k]) for k in keys])
    Console().print(table)


def _influence_examples(run: Path, eval_index: int | None, top: int, raw: bool, as_json: bool) -> None:
    import json

    from .analysis.examples import run_influence

    found = run_influence(run, eval_index, top=top or None, score="raw" if raw else "cosine")
    if as_json:
        typer.echo(json.dumps(found, allow_nan=False))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    epochs = f"epochs {found['epochs'][0]}–{found['epochs'][-1]}"
    if eval_index is None:
        table = Table(title=f"self-influence: {len(found['examples'])} of {found['training_examples']:,} training "
                            f"examples, {epochs}", caption=f"score = {found['score']}")
        for key in ("index", "label", "score"):
            table.add_column(key, justify="right")
        for row in found["examples"]:
            table.add_row(str(row["index"]), row["label_name"], _cell(row["score"]))
        console.print(table)
        return
    console.print(f"evaluation image #{eval_index}: given {found['label_name']}, predicted {found['predicted_name']}; "
                  f"TracIn over {epochs} ({found['variant']} variant), ranked by {found['score']}")
    for side in ("proponents", "opponents"):
        table = Table(title=side)
        for key in ("index", "label", found["score"], "cosine" if found["score"] == "raw" else "raw"):
            table.add_column(key, justify="right")
        other = "cosine" if found["score"] == "raw" else "raw"
        for row in found[side]:
            table.add_row(str(row["index"]), row["label_name"], _cell(row["score"]), _cell(row[other]))
        console.print(table)


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return "-" if value is None else str(value)


@app.command()
@_user_errors
def stages() -> None:
    """List the registered analysis stages (* = on by default)."""
    from .stages import STAGES

    width = max(map(len, STAGES))
    for name, cls in STAGES.items():
        typer.echo(f"{name:<{width}} {'*' if cls.default else ' '} {cls.description}")


_STAGE_OPTION = re.compile(r"\s*analysis\.stages\.([^.=\s]+)\.([^=\s]+)\s*=")


def _set_stage_options(cfg: Any, items: list[str]) -> Any:
    """``--set analysis.stages.trust.images=20``: one option of one of the run's stages (the default stages
    when the config lists none), the value read as YAML."""
    if not items:
        return cfg
    from .config import _parse_yaml, validate_config
    from .stages import default_stage_specs, parse_stage_specs

    specs = parse_stage_specs(cfg.analysis.stages if cfg.analysis.stages is not None else default_stage_specs())
    for item in items:
        match = _STAGE_OPTION.match(item)
        assert match is not None
        stage, path = match.group(1), match.group(2).split(".")
        names = [name for name, _ in specs]
        if stage not in names:
            raise UserError(f"--set {item.split('=')[0].strip()}: {stage} is not among this run's stages "
                            f"({', '.join(names)}); list it in analysis.stages first")
        options = specs[names.index(stage)][1]
        for part in path[:-1]:
            options = options.setdefault(part, {})
            if not isinstance(options, dict):
                raise UserError(f"--set {item.split('=')[0].strip()}: {part} is a value, not a section")
        text = item.split("=", 1)[1]
        options[path[-1]] = _parse_yaml(text, f"--set {item.split('=')[0].strip()}: the value") if text.strip() else ""
    raw = cfg.model_dump(mode="json")
    raw["analysis"]["stages"] = [{name: options} if options else name for name, options in specs]
    return validate_config(raw, "--set")


def _home(path: Path | None) -> Path | None:
    """``~`` at the start of a path is the home folder, as a shell would have made it."""
    return path.expanduser() if path is not None else None


def _parse_hidden(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1:
        raise UserError(f"--hidden {text!r}: expected positive sizes separated by commas, e.g. --hidden 3,2")
    return sizes


def _print_summaries(reporter: RichReporter, summaries: dict[str, Any]) -> None:
    """Every summary table the stages returned: text columns left, numbers right, then the notes."""
    from rich import box
    from rich.measure import Measurement
    from rich.table import Table

    for summary in summaries.values():
        if not summary.terminal:
            continue
        view = Table(title=summary.title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                     collapse_padding=True)
        numeric = [all(isinstance(row[i], int | float) or row[i] is None for row in summary.rows)
                   for i in range(len(summary.columns))]
        for column, is_number in zip(summary.columns, numeric, strict=True):
            view.add_column(column, justify="right" if is_number else "left", no_wrap=True)
        for row in summary.rows:
            view.add_row(*[f"{v:.3f}" if isinstance(v, float) else ("—" if v is None else str(v)) for v in row])
        # the table at its natural width even in a narrow terminal or a pipe (80 columns): a wrapped line
        # reads better than numbers cut to "0.2…" (print's own width= is capped at the console's width)
        console = reporter.console
        natural = Measurement.get(console, console.options.update(width=10_000), view).maximum
        width = console.width
        console.width = max(width, natural)
        try:
            console.print(view)
        finally:
            console.width = width
        for line in summary.notes:
            reporter.notice(line)


_OWN_PROCESS = False  # set by main(): the process is the `interp` command's, not a caller's


def settle_collector() -> None:
    """In the `interp` command's own process, once torch is imported: torch's modules (hundreds of
    thousands of objects, alive until the process ends) are frozen out of the cycle collector's full
    walks, and its young generation is collected every 10,000 allocations instead of 700. Each pass of
    a training loop found little to free; together they cost about a second of a default run. A caller
    that runs the commands in its own process (``app`` from Python) keeps its collector as it was."""
    if _OWN_PROCESS:
        gc.freeze()
        gc.set_threshold(10_000, 10, 10)


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``interp`` console script."""
    global _OWN_PROCESS
    _OWN_PROCESS = True
    try:
        return app(args=argv if argv is not None else sys.argv[1:], prog_name="interp")
    finally:
        # What is left lives until the process ends. Without this the interpreter's teardown walks torch's
        # hundreds of thousands of objects with the cycle collector once more, which delays the exit of a
        # finished run by 1–2 s; frozen objects are skipped (and freed with the process as usual).
        gc.freeze()
