"""A static HTML page of a run: its metrics, the trust and per-class tables, every stage's figures and the
animations.

The page lives in ``save/<run>/report/index.html`` and links to the run's own files by relative paths,
so the run folder can be copied or served as it is. Nothing is fetched from the network. The page is
rendered by an autoescaping Jinja2 template and holds no script, so a run folder received from someone
else cannot carry script into it. What would otherwise take script is plain HTML and CSS: each stage's
epoch selector is a group of radio buttons (the checked one shows its epoch's figures), and a figure is
enlarged by a link to an overlay that CSS shows while it is the page's ``:target``.

The header describes what the run trained: ``interp train``'s model and epochs, or for an ``interp
animate`` run (no epochs, only ``animations/``) the animate section's hidden shapes and frames.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .errors import UserError
from .run import Run

__all__ = ["build_report"]

STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1180px; padding: 0 24px 48px; color: #222; }
h1 { margin-top: 28px; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 36px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-variant-numeric: tabular-nums; }
th, td { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: right; }
th:first-child, td:first-child, td.text, th.text { text-align: left; }
.pair { display: flex; gap: 18px; flex-wrap: wrap; align-items: flex-start; }
figure { margin: 8px 0; } figcaption { color: #666; font-size: 13px; }
img, video { max-width: 100%; border: 1px solid #eee; image-rendering: auto; }
figure a img { cursor: zoom-in; }
tr.bad td:last-child { color: #a33; font-weight: 600; } tr.good td:last-child { color: #277a2d; font-weight: 600; }
.muted { color: #777; } code { background: #f4f4f4; padding: 1px 4px; }
nav a { margin-right: 12px; }
/* the epoch selector: one radio button per epoch; the checked one shows the panel right after its label
   (no child combinator here: the style goes through the escaping template like everything else) */
.epochs { display: flex; flex-wrap: wrap; align-items: center; gap: 4px; margin: 6px 0 0; }
.epochs .what { color: #666; font-size: 13px; margin-right: 4px; }
.epochs input { position: absolute; opacity: 0; pointer-events: none; }
.epochs label { padding: 1px 9px; border: 1px solid #bbb; border-radius: 4px; cursor: pointer;
  font-variant-numeric: tabular-nums; user-select: none; }
.epochs label:hover { border-color: #246; }
.epochs input:checked + label { background: #246; border-color: #246; color: #fff; }
.epochs input:focus-visible + label { outline: 2px solid #48c; outline-offset: 1px; }
.epochs .panel { order: 1; width: 100%; display: none; }
.epochs input:checked + label + .panel { display: flex; gap: 18px; flex-wrap: wrap; align-items: flex-start; }
/* click a figure to enlarge it to the window's width (scroll for tall ones): the overlay is shown while the
   address ends in its #id, no script; a click on the picture or beside it closes it */
.zoom { display: none; position: fixed; inset: 0; z-index: 10; overflow: auto; text-align: center;
  background: rgba(15, 15, 15, 0.92); }
.zoom:target { display: block; }
.zoom .shut { position: fixed; inset: 0; }
.zoom p { position: sticky; top: 0; z-index: 1; margin: 0; padding: 8px; color: #eee; font-size: 14px;
  background: rgba(15, 15, 15, 0.92); }
.zoom p a { color: #9cf; margin-left: 14px; }
.zoom img { position: relative; z-index: 1; width: min(96vw, 1800px); max-width: none; height: auto; border: 0;
  margin-bottom: 16px; cursor: zoom-out; }
"""


def _epoch_dirs(run: Run) -> list[tuple[int, Path]]:
    found = []
    for path in run.path.glob("epoch_*"):
        match = re.fullmatch(r"epoch_(\d+)", path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def _number(value: Any) -> float | None:
    """A finite number read from a file, or None (text, lists, NaN … are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _fmt(value: Any, digits: int = 4, limit: int = 200) -> str:
    """A number with ``digits`` decimals, other values as text of at most ``limit`` characters."""
    number = _number(value)
    if number is not None:
        return f"{number:.{digits}f}" if isinstance(value, float) else str(value)
    return "—" if value is None or isinstance(value, float) else str(value)[:limit]


def _percent(value: Any) -> str:
    number = _number(value)
    return f"{100 * number:.2f} %" if number is not None else _fmt(value)


def _href(path: Path, page_dir: Path) -> str:
    """A relative, percent-encoded link from the page to a file of the run."""
    return quote(Path("..", path.relative_to(page_dir.parent)).as_posix())


def _curves_png(metrics: list[dict[str, Any]], path: Path) -> Path | None:
    """Loss and accuracy per epoch (epoch 0 = before training) as one PNG."""
    rows = [m for m in metrics if _number(m.get("epoch")) is not None]
    if not rows:
        return None
    from matplotlib.ticker import MaxNLocator

    from .analysis.sink import write_atomic
    from .plotting import figure, render, style

    with style():
        fig, axes = figure(1, 2, panel=3.4)
        for ax, key, label in ((axes[0, 0], "loss", "loss"), (axes[0, 1], "accuracy", "accuracy")):
            for split, marker in (("train", "-o"), ("eval", "-s")):
                points = [(_number(m["epoch"]), _number(m.get(f"{split}_{key}"))) for m in rows]
                points = [(e, v) for e, v in points if v is not None]
                if points:
                    ax.plot(*zip(*points, strict=True), marker, markersize=4, label=split)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
            ax.set_title(label)
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
        png = render(fig)
    write_atomic(path, png)
    return path


def _metrics_rows(metrics: list[dict[str, Any]]) -> list[list[str]]:
    return [[_fmt(m.get("epoch")), _fmt(m.get("train_loss")), _fmt(m.get("eval_loss")),
             _percent(m.get("train_accuracy")), _percent(m.get("eval_accuracy")), _fmt(m.get("seconds"), 1)]
            for m in metrics]


def _summary(stage: str, path: Path) -> dict[str, Any] | None:
    """A stage's summary table from its summary.json (None if it cannot be read as one), any stage's alike:
    every column as a cell, a row's mark (good, bad) as its colour."""
    from .stages.base import MARKS

    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or not isinstance(summary.get("rows"), list):
        return None
    columns = summary.get("columns")
    notes = summary.get("notes")
    marks = summary.get("marks")
    marks = marks if isinstance(marks, list) else []
    rows = [row for row in summary["rows"] if isinstance(row, list)]
    return {"stage": stage, "title": _fmt(summary.get("title")), "epoch": _fmt(summary.get("epoch")),
            "columns": [_fmt(c) for c in columns] if isinstance(columns, list) else [],
            "rows": [{"cells": [{"value": _fmt(cell, 3), "text": _number(cell) is None and cell is not None}
                               for cell in row],
                      "css": marks[i] if i < len(marks) and marks[i] in MARKS else ""}
                     for i, row in enumerate(rows)],
            "notes": [_fmt(n, limit=5000) for n in notes] if isinstance(notes, list) else []}


def _raw_config(run: Run) -> dict[str, Any]:
    """The run's config.yaml as plain data ({} if it cannot be read)."""
    import yaml

    try:
        raw = yaml.safe_load(run.config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return raw if isinstance(raw, dict) else {}


def _section(raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    return value if isinstance(value, dict) else {}


def _configured_stages(raw: dict[str, Any]) -> list[str]:
    """Stage names in the order the run's config lists them."""
    specs = _section(raw, "analysis").get("stages") or []
    if not isinstance(specs, list):
        return []
    return [spec if isinstance(spec, str) else str(next(iter(spec)))
            for spec in specs if isinstance(spec, str | dict) and spec]


def _config_summary(raw: dict[str, Any]) -> dict[str, str] | None:
    if not raw:
        return None
    data, model, train = _section(raw, "data"), _section(raw, "model"), _section(raw, "train")
    shape = (f"hidden {model.get('hidden')}, {model.get('activation')}" if model.get("arch") == "mlp"
             else f"width {model.get('width')}")
    return {"dataset": str(data.get("dataset")), "arch": str(model.get("arch")), "shape": shape,
            "epochs": str(train.get("epochs")), "optimizer": str(train.get("optimizer")),
            "lr": str(train.get("lr")), "seed": str(raw.get("seed"))}


def _animation_records(run: Run) -> list[tuple[Path, dict[str, Any]]]:
    """The metrics JSON ``interp animate`` wrote beside each animation (``animations/<dataset>.json``)."""
    records = []
    for path in sorted(run.animations.glob("*.json")) if run.animations.is_dir() else []:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and isinstance(record.get("frames"), list):
            records.append((path, record))
    return records


def _general(value: Any) -> str:
    """A number as Python's ``g`` format writes it (0.01, 1e-05), other values as text."""
    number = _number(value)
    return f"{number:g}" if number is not None else _fmt(value)


def _shape(value: Any) -> str:
    """A hidden-layer shape as ``[3, 2]``."""
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return _fmt(value)


def _animation_summary(raw: dict[str, Any], records: list[tuple[Path, dict[str, Any]]]) -> dict[str, str]:
    """What ``interp animate`` trained, for the page's header: the animate section of config.yaml, with the
    frames as they were drawn when the animation's metrics file says so (model.hidden, train.epochs … do
    not apply to an animation)."""
    data, model, train = _section(raw, "data"), _section(raw, "model"), _section(raw, "train")
    animate = _section(raw, "animate")
    record = records[0][1] if records else {}
    hidden = animate.get("hidden")
    shapes = ", ".join(_shape(h) for h in hidden) if isinstance(hidden, list) else _fmt(hidden)
    architectures = record.get("architectures")
    if isinstance(architectures, list) and architectures:
        shapes += " (" + ", ".join(_fmt(a) for a in architectures) + ")"
    frames = len(record["frames"]) if record else animate.get("frames")
    unit, steps = record.get("frame_unit"), record.get("steps_per_frame")
    batch = record.get("batch_size", data.get("batch_size"))
    if unit == "epoch" or (not record and animate.get("steps_per_frame") is None):
        between = f"one epoch ({_fmt(steps)} steps of batch {_fmt(batch)})" if steps is not None \
            else f"one epoch (batch {_fmt(batch)})"
    else:
        between = f"{_fmt(steps if steps is not None else animate.get('steps_per_frame'))} steps of batch {_fmt(batch)}"
    return {"dataset": _fmt(record.get("dataset", data.get("dataset"))), "shapes": shapes,
            "activation": _fmt(model.get("activation")), "frames": _fmt(frames), "between": between,
            "optimizer": _fmt(train.get("optimizer")), "lr": _general(train.get("lr")), "seed": _fmt(raw.get("seed"))}


def _animation_table(path: Path, record: dict[str, Any]) -> dict[str, Any] | None:
    """Loss and accuracy (or test loss) of every architecture at the animation's last frame."""
    last = record["frames"][-1] if record["frames"] else None
    models = last.get("models") if isinstance(last, dict) else None
    if not isinstance(models, list):
        return None
    models = [m for m in models if isinstance(m, dict)]
    columns = [key for key in ("loss", "accuracy", "test_loss") if any(key in m for m in models)]
    rows = [[_fmt(m.get("shape"))] + [_percent(m.get(key)) if key == "accuracy" else _fmt(m.get(key), 4)
                                       for key in columns] for m in models]
    return {"name": path.stem, "frame": _fmt(last.get("frame") if isinstance(last, dict) else None),
            "columns": [c.replace("_", " ") for c in columns], "rows": rows}


class _Figures:
    """Numbers the figures of the page, so each can have an overlay of its own to enlarge it."""

    def __init__(self, page_dir: Path) -> None:
        self.page_dir = page_dir
        self.count = 0

    def __call__(self, path: Path, caption: str) -> dict[str, str]:
        self.count += 1
        return {"href": _href(path, self.page_dir), "caption": caption, "id": f"f{self.count}",
                "zoom": f"z{self.count}"}


def _environment() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined

    # autoescape: every value that came from a file of the run is HTML-escaped on the way in
    return Environment(loader=PackageLoader("interp", "templates"), autoescape=True, undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True)


def build_report(run_dir: Path | str) -> Path:
    """Write ``<run>/report/index.html`` (and a loss/accuracy plot beside it); returns the page's path.

    Every value read from the run folder (metrics, trust numbers, config values, file names) goes into
    the page through an autoescaping template, and the page carries no script at all."""
    run = Run.open(Path(run_dir))
    metrics = [row for row in run.read_metrics() if isinstance(row, dict)]
    raw = _raw_config(run)
    epochs = _epoch_dirs(run)
    if not metrics and not epochs and not run.animations.is_dir():
        raise UserError(f"run {run.path} has nothing to report yet (no epochs, no animations)")
    page_dir = run.path / "report"
    page_dir.mkdir(exist_ok=True)
    sections = []
    records = _animation_records(run)
    figure = _Figures(page_dir)
    # a run of `interp animate` trained the animate section's shapes, not model.hidden for train.epochs
    animation_run = not metrics and not epochs
    context: dict[str, Any] = {
        "name": run.name, "style": STYLE, "config": None if animation_run else _config_summary(raw),
        "animation": _animation_summary(raw, records) if animation_run and (raw or records) else None,
        "files": [(name, _href(run.path / name, page_dir)) for name in ("config.yaml", "metrics.jsonl")
                  if (run.path / name).is_file()],
        "metrics": [], "curves": False, "final": None, "best": None, "summaries": [],
        "animations": [], "animation_tables": [], "stages": [], "last_epoch": None, "analyses": []}
    if animation_run:
        context["files"] += [(path.name, _href(path, page_dir)) for path, _ in records]

    if metrics:
        final = metrics[-1]
        scored = [m for m in metrics if _number(m.get("eval_accuracy")) is not None]
        best = max(scored, key=lambda m: _number(m["eval_accuracy"]) or 0.0, default=None)
        context["final"] = {"accuracy": _percent(final.get("eval_accuracy")), "epoch": _fmt(final.get("epoch"))}
        if best is not None:
            context["best"] = {"accuracy": _percent(best["eval_accuracy"]), "epoch": _fmt(best.get("epoch"))}
        context["metrics"] = _metrics_rows(metrics)
        context["curves"] = _curves_png(metrics, page_dir / "curves.png") is not None
        sections.append(("metrics", "Training"))

    latest: dict[str, Path] = {}  # each stage's latest summary table
    for _, folder in epochs:
        for path in folder.glob("*/summary.json"):
            latest[path.parent.name] = path
    tables = [_summary(stage, path) for stage, path in sorted(latest.items())]
    context["summaries"] = [t for t in tables if t is not None]
    if context["summaries"]:
        sections.append(("summaries", "Summaries"))

    animations = sorted(run.animations.glob("*")) if run.animations.is_dir() else []
    context["animations"] = [{**figure(path, path.name), "video": path.suffix == ".mp4"}
                             for path in animations if path.suffix in (".gif", ".mp4", ".png")]
    tables = [_animation_table(path, record) for path, record in records]
    context["animation_tables"] = [t for t in tables if t is not None]
    if context["animations"]:
        sections.append(("animations", "Animations"))

    if epochs:
        context["last_epoch"] = epochs[-1][0]
        order = _configured_stages(raw)
        stage_names = sorted({p.name for _, d in epochs for p in d.iterdir() if p.is_dir()},
                             key=lambda n: (order.index(n) if n in order else len(order), n))
        for number, stage in enumerate(stage_names, 1):
            # one panel per epoch with that epoch's figures; the selector starts on the last epoch
            panels = []
            for epoch, folder in epochs:
                paths = sorted((folder / stage).glob("*.png")) + sorted((folder / stage).glob("*.gif"))
                paths = [path for path in paths if path.is_file()]
                if paths:
                    panels.append({"epoch": epoch, "id": f"s{number}-e{epoch}",
                                   "figures": [figure(path, f"{path.name} · epoch {epoch}") for path in paths]})
            if panels:
                context["stages"].append({"name": stage, "anchor": quote(stage, safe=""), "group": f"s{number}",
                                          "panels": panels})
        if context["stages"]:
            sections.append(("stages", "Stages"))

    analysis_dir = run.path / "analysis"
    for folder in sorted(p for p in analysis_dir.glob("*") if p.is_dir()) if analysis_dir.is_dir() else []:
        links = [(f"{p.parent.name}/{p.name}", _href(p, page_dir)) for p in sorted(folder.glob("*/*.png"))]
        context["analyses"].append({"name": folder.name, "links": links})
    if context["analyses"]:
        sections.append(("analysis", "Analyze"))

    context["sections"] = sections
    page = _environment().get_template("report.html").render(**context)
    from .analysis.sink import write_atomic

    target = page_dir / "index.html"
    write_atomic(target, page.encode("utf-8"))
    return target
