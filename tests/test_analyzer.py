"""The Python API in a plain PyTorch loop: the README's snippet, run as written, writes what
``interp train`` writes for the same stages."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import quick_config
from interp.train import fit

ROOT = Path(__file__).parent.parent


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- tested: tests/test_analyzer.py runs this block -->\n```python\n(.*?)```", text, re.S)
    assert match, "the README's Analyzer snippet is missing"
    return match.group(1)


def layout(run: Path) -> dict[str, set[str]]:
    """Per epoch folder: the files the stages wrote."""
    return {d.name: {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}
            for d in sorted(run.glob("epoch_*"))}


def tags(run: Path) -> set[str]:
    acc = EventAccumulator(str(run), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return set(acc.Tags()["scalars"]) | set(acc.Tags()["images"])


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("api")
    proc = subprocess.run([sys.executable, "-c", readme_snippet()], cwd=folder, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "save/mine" in proc.stdout and "'saliency'" in proc.stdout
    cli = fit(quick_config("analysis.stages=[confusion, saliency, trust, dataset_map, health]", "data.train_limit=2000"),
              save_dir=tmp_path_factory.mktemp("cli")).run_dir
    return folder / "save" / "mine", cli


def test_the_analyzer_writes_what_interp_train_writes(both: tuple[Path, Path]) -> None:
    api, cli = both
    assert layout(api) == layout(cli)
    assert set(layout(api)) == {"epoch_000", "epoch_001", "epoch_002"}
    api_rows = [json.loads(line) for line in (api / "metrics.jsonl").read_text().splitlines()]
    cli_rows = [json.loads(line) for line in (cli / "metrics.jsonl").read_text().splitlines()]
    def keys(row: dict) -> list[str]:  # health's keys name the model's modules: nn.Sequential's "2", the MLP's "features.fc1.1"
        return sorted("/".join(k.split("/")[:2]) if k.startswith("health/") else k for k in row)

    assert [keys(r) for r in api_rows] == [keys(r) for r in cli_rows]
    assert "health/dead/2" in api_rows[2] and "health/update_ratio/3.weight" in api_rows[2]
    def named(tags: set[str]) -> set[str]:
        return {"/".join(t.split("/")[:2]) if t.startswith("health/") else t for t in tags}

    assert named(tags(api)) - {"loss/train", "lr"} == named(tags(cli)) - {"loss/train", "lr", "accuracy/train"}
    # the numbers are the model's own: the confusion stage's accuracy is the evaluation accuracy
    assert all(r["confusion/accuracy"] == pytest.approx(r["eval_accuracy"]) for r in api_rows)
    assert api_rows[-1]["eval_accuracy"] > 0.8
    assert "trust/saliency/randomization_correlation" in api_rows[-1]  # epochs=2: the last run is final
    assert "trust/saliency/randomization_correlation" not in api_rows[1]


def test_report_works_on_an_analyzer_folder(both: tuple[Path, Path]) -> None:
    from interp.report import build_report

    page = build_report(both[0]).read_text(encoding="utf-8")
    assert 'id="trust"' in page and "epoch_002/saliency/saliency.png" in page


def test_analyzer_leaves_the_model_and_rng_alone(tmp_path: Path) -> None:
    from torch import nn

    from interp import Analyzer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).train()
    x, y = torch.randn(30, 1, 3, 4), torch.arange(30) % 3
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = torch.get_rng_state()
    analyzer = Analyzer(tmp_path / "run", eval_data=(x, y), classes=["a", "b", "c"],
                        stages=["confusion", {"saliency": {"smoothgrad_samples": 2}}], notice=lambda m: None)
    result = analyzer.run(model, epoch=0)
    analyzer.close()
    assert model.training and torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # batch-norm stats untouched
    assert result.row["epoch"] == 0 and 0 <= result.row["eval_accuracy"] <= 1
    assert (tmp_path / "run" / "epoch_000" / "saliency" / "saliency.png").is_file()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"eval_data": (torch.zeros(3, 1, 2, 2), torch.zeros(4))}, "3 inputs and 4 labels"),
    ({"eval_data": (torch.zeros(3, 1, 2, 2), torch.tensor([0, 1, 5]))}, "labels 0…5, but there are 3 classes"),
    ({"mean": (0.5,)}, "give both mean and std"),
    ({"stages": ["nope"]}, "stages: entry 0: unknown stage 'nope'"),
])
def test_analyzer_mistakes_are_user_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    from interp import Analyzer, UserError

    args = {"eval_data": (torch.zeros(3, 1, 2, 2), torch.tensor([0, 1, 2])), "classes": ["a", "b", "c"], **kwargs}
    with pytest.raises(UserError, match=re.escape(message)):
        Analyzer(tmp_path / "run", **args)
