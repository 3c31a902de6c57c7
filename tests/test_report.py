"""`interp report`: a static page whose every link and image points at a file of the run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import quick_config
from interp.animate.command import animate_config
from interp.cli import app
from interp.config import bundled_config, load_config
from interp.report import build_report
from interp.train import fit


class Page(HTMLParser):
    """Collects image sources, links, table rows (by table id), radio buttons, label texts (by the input
    they are for), the header's text and, for each figure, the image it shows and the links it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.rows: dict[str, list[list[str]]] = {}
        self.radios: list[dict[str, str | None]] = []
        self.labels: dict[str, str] = {}
        self.figures: list[dict[str, list[str]]] = []
        self.about = ""
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._label: str | None = None
        self._in_about = False
        self._figure: dict[str, list[str]] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "figure":
            self._figure = {"images": [], "links": []}
            self.figures.append(self._figure)
        elif tag == "p" and values.get("id") == "about":
            self._in_about = True
        elif tag == "input" and values.get("type") == "radio":
            self.radios.append(values)
        elif tag == "label":
            self._label = values.get("for") or ""
            self.labels[self._label] = ""
        if tag in ("img", "video"):
            self.images.append(values["src"] or "")
            if self._figure is not None:
                self._figure["images"].append(values["src"] or "")
        elif tag == "a":
            self.links.append(values["href"] or "")
            if self._figure is not None:
                self._figure["links"].append(values["href"] or "")
        elif tag == "table":
            self._table = values.get("id") or ""
            self.rows[self._table] = []
        elif tag == "tr" and self._table is not None:
            self.rows[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._label is not None:
            self.labels[self._label] += data
        if self._in_about:
            self.about += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure":
            self._figure = None
        elif tag == "label":
            self._label = None
        elif tag == "p":
            self._in_about = False
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.rows[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    cfg = quick_config("analysis.stages=[confusion, saliency, {integrated_gradients: {steps: 16}}, {trust: {steps: 8}}]")
    return fit(cfg, save_dir=tmp_path_factory.mktemp("save")).run_dir


def _page(run_dir: Path) -> tuple[Path, Page]:
    page_path = build_report(run_dir)
    page = Page()
    page.feed(page_path.read_text(encoding="utf-8"))
    return page_path, page


def test_report_links_only_files_of_the_run(run_dir: Path) -> None:
    page_path = build_report(run_dir)
    assert page_path == run_dir / "report" / "index.html"
    page = Page()
    page.feed(page_path.read_text(encoding="utf-8"))
    targets = page.images + [link for link in page.links if not link.startswith("#")]
    for target in targets:
        assert not target.startswith(("http:", "https:", "/")), target
        assert (page_path.parent / target).resolve().is_file(), target
    pngs = {p.resolve() for p in run_dir.glob("epoch_*/*/*.png")}
    shown = {(page_path.parent / t).resolve() for t in targets}
    assert pngs <= shown  # every figure of every epoch is reachable from the page
    # epoch 0 and the last epoch side by side for each stage
    assert "../epoch_000/saliency/saliency.png" in page.images and "../epoch_002/saliency/saliency.png" in page.images

    metrics = page.rows["metrics"]
    assert [row[0] for row in metrics[1:]] == ["0", "1", "2"]
    trust = page.rows["trust"]
    assert [row[0] for row in trust[1:]] == ["saliency", "smoothgrad", "integrated_gradients",
                                             "integrated_gradients_blur", "expected_gradients", "guided_backprop",
                                             "edges", "random"]
    assert all(row[-1].startswith(("trust", "doubt", "uncertain")) for row in trust[1:-2])
    assert [row[-1] for row in trust[-2:]] == ["reference", "reference"]  # the null maps


def test_every_figure_links_to_its_full_size_file(run_dir: Path) -> None:
    page_path, page = _page(run_dir)
    figures = [f for f in page.figures if any(src.startswith("../epoch_") for src in f["images"])]
    assert len(figures) == len(list(run_dir.glob("epoch_*/*/*.png")))
    for figure in figures:
        src = figure["images"][0]
        assert src in figure["links"], figure  # "full size": the PNG itself
        assert (page_path.parent / src).resolve().is_file()
        zoom = [link for link in figure["links"] if link.startswith("#")]
        assert len(zoom) == 1  # and the overlay that enlarges it in the page
        overlay = re.search(rf'<div class="zoom" id="{zoom[0][1:]}">(.*?)</div>',
                            page_path.read_text(encoding="utf-8"), re.S)
        assert overlay is not None and f'src="{src}"' in overlay.group(1) and f'href="{src}"' in overlay.group(1)


def test_epoch_selector_has_one_entry_per_analyzed_epoch_and_starts_on_the_last(run_dir: Path) -> None:
    page_path, page = _page(run_dir)
    epochs = sorted(int(p.name.removeprefix("epoch_")) for p in run_dir.glob("epoch_*"))
    assert epochs == [0, 1, 2]
    stages = sorted({p.name for p in run_dir.glob("epoch_*/*") if list(p.glob("*.png"))})
    groups: dict[str, list[dict[str, str | None]]] = {}
    for radio in page.radios:
        groups.setdefault(str(radio["name"]), []).append(radio)
    assert len(groups) == len(stages) == 4  # one selector per stage
    for radios in groups.values():
        assert [page.labels[str(r["id"])] for r in radios] == [str(e) for e in epochs]
        assert ["checked" in r for r in radios] == [False] * (len(epochs) - 1) + [True]
    assert "at every epoch:" not in page_path.read_text(encoding="utf-8")  # no more rows of links


def test_per_class_table_is_the_last_epochs_confusion_json(run_dir: Path) -> None:
    """The confusion stage's per-class table, shown like any stage's summary."""
    _, page = _page(run_dir)
    saved = json.loads((run_dir / "epoch_002" / "confusion" / "confusion.json").read_text())
    rows = page.rows["confusion"]
    assert rows[0] == ["class", "precision", "recall", "F1", "support"]
    assert len(rows) - 1 == len(saved["per_class"]) == 10
    for row, expected in zip(rows[1:], saved["per_class"], strict=True):
        assert row[0] == expected["class"]
        for cell, key in zip(row[1:4], ("precision", "recall", "f1"), strict=True):
            assert float(cell) == pytest.approx(expected[key], abs=5e-4)
        assert int(row[4]) == expected["support"]


def test_report_of_an_animation_describes_what_was_animated(tmp_path: Path) -> None:
    cfg = load_config(bundled_config("rings"), ["data.points=500", "data.batch_size=100", "animate.frames=3",
                                                "animate.hidden=[[1,2],[3,2]]", "animate.display_points=100"])
    animate_config(cfg, save_dir=tmp_path, name="rings")
    run = tmp_path / "rings"
    page_path, page = _page(run)
    about = " ".join(page.about.split())
    assert "[1, 2], [3, 2] (2-1-2-1, 2-3-2-1)" in about and "tanh" in about
    assert "3 frames" in about and "one epoch (10 steps of batch 100)" in about and "adam lr 0.01" in about
    # model.hidden and train.epochs are in config.yaml but were not used
    assert "[128]" not in about and "epochs of" not in about and "mlp (" not in about
    record = json.loads((run / "animations" / "rings.json").read_text())
    table = page.rows["animation-1"]
    assert [row[0] for row in table[1:]] == record["architectures"]
    last = record["frames"][-1]["models"]
    assert [float(row[1]) for row in table[1:]] == pytest.approx([m["loss"] for m in last], abs=5e-5)
    for target in page.images + [link for link in page.links if not link.startswith("#")]:
        assert (page_path.parent / target).resolve().is_file(), target
    assert "../animations/rings.gif" in page.images and "../animations/rings.gif" in page.links


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs the chromium browser")
def test_report_renders_in_a_browser(run_dir: Path, tmp_path: Path) -> None:
    page_path = build_report(run_dir)

    def screenshot(fragment: str = "") -> np.ndarray:
        shot = tmp_path / f"page{fragment}.png"
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
                        "--window-size=1200,1800", f"--screenshot={shot}", page_path.as_uri() + fragment],
                       check=True, capture_output=True, timeout=120)
        return np.asarray(Image.open(shot).convert("RGB")).astype(int)

    pixels = screenshot()
    assert pixels.shape[:2] == (1800, 1200)
    # the loss curves image (blue and orange lines) is drawn, not a broken-image icon
    blue = (np.abs(pixels - [31, 119, 180]).sum(axis=2) < 40).sum()
    orange = (np.abs(pixels - [255, 127, 14]).sum(axis=2) < 40).sum()
    assert blue > 200 and orange > 200
    assert (pixels.max(axis=2) < 60).mean() < 0.05  # a white page, no overlay open

    # a figure's enlarge link opens its overlay (no script: CSS shows the :target), but only for a figure
    # of the epoch the selector shows, the last one
    text = page_path.read_text(encoding="utf-8")
    zoom = {epoch: re.search(rf'href="#(z\d+)" title="enlarge"><img src="../epoch_00{epoch}/confusion/confusion.png"',
                             text) for epoch in (0, 2)}
    assert zoom[0] and zoom[2]
    shown = screenshot(f"#{zoom[2].group(1)}")
    assert (shown.max(axis=2) < 60).mean() > 0.3  # the dark overlay covers the page
    blues = (np.abs(shown - [8, 48, 107]).sum(axis=2) < 60).sum()  # the matrix's dark blue cells, enlarged
    assert blues > 2000
    hidden = screenshot(f"#{zoom[0].group(1)}")
    assert (hidden.max(axis=2) < 60).mean() < 0.05  # epoch 0's panel is not shown, nor its overlay


def test_report_of_a_missing_run_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: run {tmp_path / 'nope'} does not exist"
