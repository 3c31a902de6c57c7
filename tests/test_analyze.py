from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import quick_config
from interp.analyze import analyze
from interp.errors import UserError
from interp.train import fit


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    save = tmp_path_factory.mktemp("save")
    cfg = quick_config("train.epochs=1", "analysis.stages=[confusion, {embeddings: {points: 40, tsne: never}}]",
                       "model.hidden=[16]")
    return fit(cfg, save_dir=save).run_dir


def test_analyze_writes_under_analysis_and_tensorboard(run_dir: Path) -> None:
    result = analyze(run_dir, checkpoint="last", stages=["confusion", "neurons"])
    assert result.folder == run_dir / "analysis" / "last" and result.epoch == 1
    assert (result.folder / "confusion" / "confusion.png").is_file()
    assert (result.folder / "neurons" / "neurons.png").is_file()
    saved = json.loads((result.folder / "metrics.json").read_text())
    trained = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert saved["confusion/accuracy"] == pytest.approx(trained["eval_accuracy"], abs=1e-9)
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert "analysis/last/neurons/neurons" in acc.Tags()["images"]
    assert acc.Scalars("analysis/last/confusion/accuracy")[0].step == 1


def test_analyze_keeps_the_training_projector_entries(run_dir: Path) -> None:
    analyze(run_dir, checkpoint="best", stages=["embeddings"])
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    config = text_format.Parse((run_dir / "projector_config.pbtxt").read_text(), ProjectorConfig())
    names = [e.tensor_name for e in config.embeddings]
    assert names == ["embeddings, previous epoch 000", "embeddings, last epoch (1)",
                     "embeddings, of analysis/best (epoch 1)"]
    assert sorted(names)[0] == "embeddings, last epoch (1)"  # the projector still opens on the trained network


def test_analyze_mistakes_are_user_errors(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        analyze(tmp_path / "nope")
    with pytest.raises(UserError, match="nope.pt not found"):
        analyze(run_dir, checkpoint=str(tmp_path / "nope.pt"))
    with pytest.raises(UserError, match="unknown stage"):
        analyze(run_dir, stages=["confusionn"])
    other = tmp_path / "other"
    other.mkdir()
    (other / "checkpoints").mkdir()
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["model"]["hidden"] = [32]  # a different architecture than the checkpoint's
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    (other / "checkpoints" / "best.pt").write_bytes((run_dir / "checkpoints" / "best.pt").read_bytes())
    with pytest.raises(UserError, match="does not fit the model in config.yaml"):
        analyze(other)
