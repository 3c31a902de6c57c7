"""benchmarks/gpu.sh --smoke: every section of the GPU benchmark at tiny sizes on the CPU, so that the script
is known to work before a GPU machine is at hand; and its synthetic dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
STAGES = {"confusion", "calibration", "top_losses", "saliency", "integrated_gradients", "gradcam", "weights",
          "neurons", "activations", "dataset_map", "embeddings", "trust"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict, str]:
    out = tmp_path_factory.mktemp("gpu") / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1500, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), json.loads(out.read_text()), proc.stderr


def test_smoke_prints_one_json_object_and_writes_it(smoke) -> None:  # type: ignore[no-untyped-def]
    printed, written, _ = smoke
    assert printed == written
    assert printed["mode"] == "smoke" and printed["environment"]["device"] == "cpu"
    assert printed["targets"] == "not judged at smoke sizes"
    for section in ("throughput", "analysis_share", "torchrun", "recipe", "stage_costs"):
        assert "error" not in printed[section] and "skipped" not in printed[section], printed[section]


def test_throughput_ratio_is_the_ratio_of_the_measured_epochs(smoke) -> None:  # type: ignore[no-untyped-def]
    result = smoke[0]["throughput"]
    n = result["images"]
    measured = {k: v for k, v in result["variants"].items() if "skipped" not in v}
    assert set(measured) == {"fp32", "bf16", "bf16_channels_last"}
    assert "compile" in result["variants"]["bf16_channels_last_compile"]["skipped"]
    # the host waits are counted with CUDA's sync debug mode: on the CPU the key says so
    assert result["host_syncs_per_training_epoch"] == "cuda only" and result["steps_per_epoch"] == -(-n // 128)
    for variant in measured.values():
        plain, ours = variant["plain_epoch_s"][1:], variant["interp_epoch_s"][1:]  # the first epoch warms up
        assert len(plain) == len(ours) == result["epochs"] - 1
        assert variant["plain_images_per_s"] == pytest.approx(n / sorted(plain)[len(plain) // 2], rel=0.01)
        assert variant["interp_over_plain"] == pytest.approx(variant["interp_images_per_s"]
                                                             / variant["plain_images_per_s"], rel=0.01)


def test_analysis_share_adds_up(smoke) -> None:  # type: ignore[no-untyped-def]
    result = smoke[0]["analysis_share"]
    assert result["analysis_share"] == pytest.approx(1 - result["training_and_evaluation_s"] / result["wall_s"],
                                                     abs=0.002)
    assert set(result["stage_seconds"]) == STAGES
    assert result["stages_s"] == pytest.approx(sum(s["total"] for s in result["stage_seconds"].values()), abs=0.05)
    assert result["stages_s"] <= result["wall_s"] - result["training_and_evaluation_s"] + 0.01


def test_recipe_and_torchrun_ran_the_command_line(smoke) -> None:  # type: ignore[no-untyped-def]
    recipe, torchrun = smoke[0]["recipe"], smoke[0]["torchrun"]
    assert recipe["epochs"] == 1 and 0 <= recipe["eval_accuracy"] <= 1
    assert set(recipe["stage_seconds"]) == STAGES
    assert recipe["wall_s"] >= recipe["training_and_evaluation_s"] + recipe["stages_s"]
    # one process, in a process group of one: gloo on the CPU (NCCL on a GPU)
    assert (torchrun["backend"], torchrun["world"], torchrun["joined"]) == ("gloo", 1, True)
    assert torchrun["eval_accuracy"] > 0.3  # the sample's digits, learned a little in one epoch


def test_stage_costs_name_every_stage_at_both_points(smoke) -> None:  # type: ignore[no-untyped-def]
    runs = smoke[0]["stage_costs"]["runs"]
    assert set(runs) == {"mlp-28px", "allconv-28px"}
    for label, run in runs.items():
        expected = STAGES - {"gradcam"} if label.startswith("mlp") else STAGES  # Grad-CAM needs a conv layer
        assert set(run["epoch1"]) == set(run["final"]) == expected
        assert set(run["epoch0"]) == expected - {"dataset_map"}  # nothing trained yet: no dynamics to map
        assert run["wall_s"] > run["epoch_s"] + sum(run["epoch1"].values()) + sum(run["final"].values())


def test_synthetic_images_are_seeded_and_learnable_by_their_class_pattern() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    a = gpu.synthetic_images(size=12, channels=3, train=400, eval=100, seed=3)
    gpu._CACHE.clear()
    b = gpu.synthetic_images(size=12, channels=3, train=400, eval=100, seed=3)
    (x, y), (ex, ey) = a["train"], a["eval"]
    assert x.shape == (400, 3, 12, 12) and x.dtype == torch.uint8 and ex.shape == (100, 3, 12, 12)
    assert torch.equal(x, b["train"][0]) and torch.equal(ey, b["eval"][1]) and len(a["classes"]) == 10
    # the nearest class mean of the training images names most evaluation images' class
    means = torch.stack([x[y == c].float().mean(0) for c in range(10)])
    nearest = torch.cdist(ex.float().flatten(1), means.flatten(1)).argmin(1)
    assert (nearest == ey).float().mean() > 0.9
