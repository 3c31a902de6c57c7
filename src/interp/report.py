"""A static HTML page of a run: its metrics, the trust table, every stage's figures and the animations.

The page lives in ``save/<run>/report/index.html`` and links to the run's own files by relative paths,
so the run folder can be copied or served as it is. Nothing is fetched from the network.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from typing import Any

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


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _percent(value: Any) -> str:
    return "—" if value is None else f"{100 * value:.2f} %"


def _rel(path: Path, page_dir: Path) -> str:
    return html.escape(Path("..", path.relative_to(page_dir.parent)).as_posix())


def _figure(path: Path, page_dir: Path, caption: str) -> str:
    return (f'<figure><a href="{_rel(path, page_dir)}"><img src="{_rel(path, page_dir)}" alt="{html.escape(caption)}" '
            f'loading="lazy"></a><figcaption>{html.escape(caption)}</figcaption></figure>')


def _curves_png(metrics: list[dict[str, Any]], path: Path) -> Path | None:
    """Loss and accuracy per epoch (epoch 0 = before training) as one PNG."""
    if not metrics:
        return None
    from .plotting import figure, render

    epochs = [m["epoch"] for m in metrics]
    fig, axes = figure(1, 2, panel=3.4)
    for ax, key, label in ((axes[0, 0], "loss", "loss"), (axes[0, 1], "accuracy", "accuracy")):
        for split, style in (("train", "-o"), ("eval", "-s")):
            points = [(e, m.get(f"{split}_{key}")) for e, m in zip(epochs, metrics, strict=True)]
            points = [(e, v) for e, v in points if v is not None]
            if points:
                ax.plot(*zip(*points, strict=True), style, markersize=4, label=split)
        ax.set_xlabel("epoch")
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    path.write_bytes(render(fig))
    return path


def _metrics_table(metrics: list[dict[str, Any]]) -> str:
    head = ("<tr><th>epoch</th><th>train loss</th><th>eval loss</th><th>train accuracy</th>"
            "<th>eval accuracy</th><th>seconds</th></tr>")
    rows = "".join(
        f"<tr><td>{m['epoch']}</td><td>{_fmt(m.get('train_loss'))}</td><td>{_fmt(m.get('eval_loss'))}</td>"
        f"<td>{_percent(m.get('train_accuracy'))}</td><td>{_percent(m.get('eval_accuracy'))}</td>"
        f"<td>{_fmt(m.get('seconds'), 1)}</td></tr>" for m in metrics)
    return f'<table id="metrics">{head}{rows}</table>'


def _trust_table(trust: dict[str, Any]) -> str:
    head = ("<tr><th>method</th><th>deletion AUC ↓</th><th>insertion AUC ↑</th><th>random deletion</th>"
            "<th>random insertion</th><th>ρ after randomisation ↓</th><th>IG completeness error</th>"
            "<th class=\"text\">verdict</th></tr>")
    rows = []
    for method, values in trust["methods"].items():
        said = values.get("verdict") or ""
        css = "trust" if said == "trust" else "doubt"
        error = values.get("completeness_error")
        rows.append(
            f"<tr><td>{html.escape(method)}</td><td>{_fmt(values.get('deletion_auc'), 3)}</td>"
            f"<td>{_fmt(values.get('insertion_auc'), 3)}</td><td>{_fmt(values.get('random_deletion_auc'), 3)}</td>"
            f"<td>{_fmt(values.get('random_insertion_auc'), 3)}</td>"
            f"<td>{_fmt(values.get('randomisation_correlation'), 3)}</td>"
            f"<td>{'—' if error is None else f'{100 * error:.2f} %'}</td>"
            f'<td class="text {css}">{html.escape(said)}</td></tr>')
    return f'<table id="trust">{head}{"".join(rows)}</table>'


def _raw_config(run: Run) -> dict[str, Any]:
    """The run's config.yaml as plain data ({} if it cannot be read)."""
    import yaml

    try:
        return yaml.safe_load(run.config_path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _configured_stages(raw: dict[str, Any]) -> list[str]:
    """Stage names in the order the run's config lists them."""
    specs = (raw.get("analysis") or {}).get("stages") or []
    return [spec if isinstance(spec, str) else next(iter(spec)) for spec in specs if isinstance(spec, str | dict) and spec]


def _config_summary(raw: dict[str, Any]) -> str:
    if not raw:
        return ""
    data, model, train = raw.get("data", {}), raw.get("model", {}), raw.get("train", {})
    shape = (f"hidden {model.get('hidden')}, {model.get('activation')}" if model.get("arch") == "mlp"
             else f"width {model.get('width')}")
    return (f"<p>{html.escape(str(data.get('dataset')))} · {html.escape(str(model.get('arch')))} ({html.escape(shape)})"
            f" · {html.escape(str(train.get('epochs')))} epochs of {html.escape(str(train.get('optimizer')))} "
            f"lr {html.escape(str(train.get('lr')))} · seed {html.escape(str(raw.get('seed')))} · "
            f'<a href="../config.yaml">config.yaml</a> · <a href="../metrics.jsonl">metrics.jsonl</a></p>')


def build_report(run_dir: Path | str) -> Path:
    """Write ``<run>/report/index.html`` (and a loss/accuracy plot beside it); returns the page's path."""
    run = Run.open(Path(run_dir))
    metrics = run.read_metrics()
    raw = _raw_config(run)
    epochs = _epoch_dirs(run)
    if not metrics and not epochs and not run.animations.is_dir():
        raise UserError(f"run {run.path} has nothing to report yet (no epochs, no animations)")
    page_dir = run.path / "report"
    page_dir.mkdir(exist_ok=True)
    parts = [f"<h1>{html.escape(run.name)}</h1>", _config_summary(raw)]
    sections = []

    if metrics:
        final = metrics[-1]
        best = max((m for m in metrics if m.get("eval_accuracy") is not None),
                   key=lambda m: m["eval_accuracy"], default=None)
        summary = f"<p>final eval accuracy <b>{_percent(final.get('eval_accuracy'))}</b> at epoch {final['epoch']}"
        if best is not None:
            summary += f"; best {_percent(best['eval_accuracy'])} at epoch {best['epoch']}"
        parts.append(summary + ".</p>")
        sections.append(("metrics", "Training"))
        parts.append('<h2 id="metrics-section">Training</h2>')
        curves = _curves_png(metrics, page_dir / "curves.png")
        if curves is not None:
            parts.append('<img src="curves.png" alt="loss and accuracy per epoch">')
        parts.append(_metrics_table(metrics))

    last_trust = next((d / "trust" / "trust.json" for _, d in reversed(epochs) if (d / "trust" / "trust.json").is_file()),
                      None)
    if last_trust is not None:
        trust = json.loads(last_trust.read_text())
        parts.append(f'<h2 id="trust-section">Can you trust the maps? (epoch {trust["epoch"]})</h2>')
        parts.append("<p>Pixels ranked by each map are deleted from the image (or inserted onto a black one); a "
                     "faithful map makes the true class's probability fall faster (lower deletion AUC) and rise "
                     "faster (higher insertion AUC) than random orders do. ρ is the rank correlation of |map| "
                     "with itself once every layer is re-initialised: a map that stays above 0.5 shows the image "
                     "more than what the network learned.</p>")
        parts.append(_trust_table(trust))
        sections.append(("trust", "Trust"))

    animations = sorted(run.animations.glob("*")) if run.animations.is_dir() else []
    shown = [p for p in animations if p.suffix in (".gif", ".mp4", ".png")]
    if shown:
        parts.append('<h2 id="animations-section">Animations</h2><div class="pair">')
        for path in shown:
            if path.suffix == ".mp4":
                parts.append(f'<figure><video src="{_rel(path, page_dir)}" controls loop muted></video>'
                             f"<figcaption>{html.escape(path.name)}</figcaption></figure>")
            else:
                parts.append(_figure(path, page_dir, path.name))
        parts.append("</div>")
        sections.append(("animations", "Animations"))

    if epochs:
        first_epoch, first_dir = epochs[0]
        last_epoch, last_dir = epochs[-1]
        order = _configured_stages(raw)
        stage_names = sorted({p.name for _, d in epochs for p in d.iterdir() if p.is_dir()},
                             key=lambda n: (order.index(n) if n in order else len(order), n))
        parts.append('<h2 id="stages-section">Stages</h2>')
        parts.append(f"<p>Each stage at epoch {first_epoch} (before training) and epoch {last_epoch}; every "
                     "epoch's figures are linked below each stage.</p>")
        for stage in stage_names:
            figures = sorted({p.name for _, d in epochs for p in (d / stage).glob("*.png")})
            gifs = sorted({p.name for _, d in epochs for p in (d / stage).glob("*.gif")})
            parts.append(f'<h3 id="stage-{html.escape(stage)}">{html.escape(stage)}</h3>')
            for name in figures + gifs:
                pair = [(e, d / stage / name) for e, d in ((first_epoch, first_dir), (last_epoch, last_dir))
                        if (d / stage / name).is_file()]
                if len(pair) == 2 and pair[0][0] == pair[1][0]:
                    pair = pair[:1]
                if not pair:  # drawn only at some epochs (e.g. the final randomisation check)
                    latest = [(e, d / stage / name) for e, d in epochs if (d / stage / name).is_file()][-1:]
                    pair = latest
                parts.append('<div class="pair">' + "".join(
                    _figure(path, page_dir, f"{name} · epoch {epoch}") for epoch, path in pair) + "</div>")
                links = [f'<a href="{_rel(d / stage / name, page_dir)}">{e}</a>' for e, d in epochs
                         if (d / stage / name).is_file()]
                parts.append(f'<p class="muted">{html.escape(name)} at every epoch: {" ".join(links)}</p>')
        sections.append(("stages", "Stages"))

    analyses = sorted(p for p in (run.path / "analysis").glob("*") if p.is_dir()) \
        if (run.path / "analysis").is_dir() else []
    if analyses:
        parts.append('<h2 id="analysis-section">interp analyze</h2><ul>')
        for folder in analyses:
            pngs = sorted(folder.glob("*/*.png"))
            anchors = " ".join(f'<a href="{_rel(p, page_dir)}">{html.escape(p.parent.name)}/{html.escape(p.name)}</a>'
                               for p in pngs)
            parts.append(f"<li><b>{html.escape(folder.name)}</b>: {anchors}</li>")
        parts.append("</ul>")
        sections.append(("analysis", "Analyze"))

    nav = "<nav>" + "".join(f'<a href="#{key}-section">{html.escape(label)}</a>' for key, label in sections) + "</nav>"
    parts.insert(2, nav)
    page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(run.name)} · interp'
            f"</title><style>{STYLE}</style></head>\n<body>\n" + "\n".join(parts) + "\n</body></html>\n")
    target = page_dir / "index.html"
    temporary = target.with_suffix(".html.tmp")
    temporary.write_text(page, encoding="utf-8")
    temporary.replace(target)
    return target
