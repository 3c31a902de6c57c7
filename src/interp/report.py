"""A static HTML page of a run: its metrics, the trust table, every stage's figures and the animations.

The page lives in ``save/<run>/report/index.html`` and links to the run's own files by relative paths,
so the run folder can be copied or served as it is. Nothing is fetched from the network. The page is
rendered by an autoescaping Jinja2 template and holds no script, so a run folder received from someone
else cannot carry script into it.
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
.pair figure { flex: 1 1 460px; }
.doubt { color: #a33; font-weight: 600; } .trust { color: #277a2d; font-weight: 600; }
.muted { color: #777; } code { background: #f4f4f4; padding: 1px 4px; }
nav a { margin-right: 12px; }
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


def _fmt(value: Any, digits: int = 4) -> str:
    number = _number(value)
    if number is not None:
        return f"{number:.{digits}f}" if isinstance(value, float) else str(value)
    return "—" if value is None or isinstance(value, float) else str(value)[:200]


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
    from .plotting import figure, render

    fig, axes = figure(1, 2, panel=3.4)
    for ax, key, label in ((axes[0, 0], "loss", "loss"), (axes[0, 1], "accuracy", "accuracy")):
        for split, style in (("train", "-o"), ("eval", "-s")):
            points = [(_number(m["epoch"]), _number(m.get(f"{split}_{key}"))) for m in rows]
            points = [(e, v) for e, v in points if v is not None]
            if points:
                ax.plot(*zip(*points, strict=True), style, markersize=4, label=split)
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    from .analysis.sink import write_atomic

    write_atomic(path, render(fig))
    return path


def _metrics_rows(metrics: list[dict[str, Any]]) -> list[list[str]]:
    return [[_fmt(m.get("epoch")), _fmt(m.get("train_loss")), _fmt(m.get("eval_loss")),
             _percent(m.get("train_accuracy")), _percent(m.get("eval_accuracy")), _fmt(m.get("seconds"), 1)]
            for m in metrics]


def _summary(stage: str, path: Path) -> dict[str, Any] | None:
    """A stage's summary table from its summary.json (None if it cannot be read as one)."""
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or not isinstance(summary.get("rows"), list):
        return None
    columns = summary.get("columns")
    notes = summary.get("notes")
    rows = [[_fmt(cell, 3) for cell in row] for row in summary["rows"] if isinstance(row, list)]
    return {"stage": stage, "title": _fmt(summary.get("title")), "epoch": _fmt(summary.get("epoch")),
            "columns": [_fmt(c) for c in columns] if isinstance(columns, list) else [],
            "rows": [{"cells": row[:-1], "verdict": row[-1] if row else "",
                      "css": "trust" if row and row[-1] == "trust" else ("doubt" if row and row[-1] in
                                                                         ("doubt", "uncertain") else "")}
                     for row in rows],
            "notes": [_fmt(n) for n in notes] if isinstance(notes, list) else []}


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
    context: dict[str, Any] = {"name": run.name, "style": STYLE, "config": _config_summary(raw),
                               "metrics": [], "curves": False, "final": None, "best": None, "summaries": [],
                               "animations": [], "stages": [], "first_epoch": None, "last_epoch": None,
                               "analyses": []}

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
    context["animations"] = [{"href": _href(path, page_dir), "caption": path.name, "video": path.suffix == ".mp4"}
                             for path in animations if path.suffix in (".gif", ".mp4", ".png")]
    if context["animations"]:
        sections.append(("animations", "Animations"))

    if epochs:
        first_epoch, first_dir = epochs[0]
        last_epoch, last_dir = epochs[-1]
        context["first_epoch"], context["last_epoch"] = first_epoch, last_epoch
        order = _configured_stages(raw)
        stage_names = sorted({p.name for _, d in epochs for p in d.iterdir() if p.is_dir()},
                             key=lambda n: (order.index(n) if n in order else len(order), n))
        for stage in stage_names:
            names = sorted({p.name for _, d in epochs for p in (d / stage).glob("*.png")}) + \
                sorted({p.name for _, d in epochs for p in (d / stage).glob("*.gif")})
            figures = []
            for name in names:
                pair = [(e, d / stage / name) for e, d in ((first_epoch, first_dir), (last_epoch, last_dir))
                        if (d / stage / name).is_file()]
                if len(pair) == 2 and pair[0][0] == pair[1][0]:
                    pair = pair[:1]
                if not pair:  # drawn only at some epochs (e.g. the final randomization check)
                    pair = [(e, d / stage / name) for e, d in epochs if (d / stage / name).is_file()][-1:]
                figures.append({
                    "name": name,
                    "shown": [{"href": _href(path, page_dir), "caption": f"{name} · epoch {epoch}"}
                              for epoch, path in pair],
                    "links": [(e, _href(d / stage / name, page_dir)) for e, d in epochs
                              if (d / stage / name).is_file()],
                })
            context["stages"].append({"name": stage, "anchor": quote(stage, safe=""), "figures": figures})
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
