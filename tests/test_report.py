"""`interp report`: a static page whose every link and image points at a file of the run."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import quick_config
from interp.cli import app
from interp.report import build_report
from interp.train import fit


class Page(HTMLParser):
    """Collects image sources, links and table rows (by table id)."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.rows: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag in ("img", "video"):
            self.images.append(values["src"] or "")
        elif tag == "a":
            self.links.append(values["href"] or "")
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

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.rows[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    cfg = quick_config("analysis.stages=[confusion, saliency, {integrated_gradients: {steps: 16}}, {trust: {steps: 8}}]")
    return fit(cfg, save_dir=tmp_path_factory.mktemp("save")).run_dir


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
    assert [row[0] for row in trust[1:]] == ["saliency", "smoothgrad", "integrated_gradients"]
    assert all(row[-1].startswith(("trust", "doubt")) for row in trust[1:])


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs the chromium browser")
def test_report_renders_in_a_browser(run_dir: Path, tmp_path: Path) -> None:
    page_path = build_report(run_dir)
    shot = tmp_path / "page.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--virtual-time-budget=5000", "--window-size=1200,1800", f"--screenshot={shot}",
                    page_path.as_uri()], check=True, capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (1800, 1200)
    # the loss curves image (blue and orange lines) is drawn, not a broken-image icon
    blue = (np.abs(pixels - [31, 119, 180]).sum(axis=2) < 40).sum()
    orange = (np.abs(pixels - [255, 127, 14]).sum(axis=2) < 40).sum()
    assert blue > 200 and orange > 200


def test_report_of_a_missing_run_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert result.output.strip() == f"error: run {tmp_path / 'nope'} does not exist"
