"""interp train under torchrun: real processes, gloo on the CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import quick_config
from interp.analysis.dynamics import load_history
from interp.analysis.health import load_health
from interp.checkpoint import load_checkpoint
from interp.train import fit

HELPER = Path(__file__).parent / "helpers" / "ddp_train.py"
ARGS = ["train", "--set", "train.device=cpu", "--set", "data.train_limit=2000",
        "--set", "analysis.stages=[confusion, {embeddings: {points: 100, tsne: never}}, {dataset_map: {points: 0}}, "
        "health]"]
# embeddings: a gather on rank 0; dataset_map: every rank records its share of the training examples; health:
# every rank its share of each sampled batch


def torchrun(tmp_path: Path, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not on PATH")
    out = tmp_path / "ranks"
    out.mkdir(exist_ok=True)
    env = {**os.environ, "INTERP_TEST_OUT": str(out), "OMP_NUM_THREADS": "1"}
    return subprocess.run(["torchrun", "--standalone", "--nproc_per_node", str(nproc), str(HELPER), *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_two_processes_train_one_run(tmp_path: Path) -> None:
    proc = torchrun(tmp_path, *ARGS, "--set", "train.epochs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = [p for p in (tmp_path / "save").iterdir()]
    assert [p.name for p in runs] == ["mnist-mlp"]  # exactly one run folder
    assert proc.stdout.count("epoch 2/2") == 1  # one rank speaks
    rank0, rank1 = (torch.load(tmp_path / "ranks" / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # identical parameters on every rank
    last = load_checkpoint(runs[0] / "checkpoints" / "last.pt")
    assert all(torch.equal(last["model"][k], rank0[k]) for k in rank0)
    rows = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    # the evaluation was sharded and gathered: the confusion matrix covers all 1,000 images
    confusion = json.loads((runs[0] / "epoch_002" / "confusion" / "confusion.json").read_text())
    assert sum(map(sum, confusion["matrix"])) == 1000
    assert confusion["accuracy"] == pytest.approx(rows[-1]["eval_accuracy"])
    # the same global batch in one process: accuracy within one point
    single_run = fit(quick_config("train.epochs=2", "data.train_limit=2000", "analysis.stages=[dataset_map, health]"),
                     save_dir=tmp_path / "single")
    single = single_run.metrics
    assert abs(single[-1]["eval_accuracy"] - rows[-1]["eval_accuracy"]) <= 0.01
    # the dynamics: each rank recorded its shard by global index, rank 0 has them all, as one process does
    ranked, alone = load_history(runs[0]), load_history(single_run.run_dir)
    assert [e.epoch for e in ranked] == [e.epoch for e in alone] == [1, 2]
    for a, b in zip(ranked, alone, strict=True):
        assert not np.isnan(a.prob.astype(np.float32)).any()  # every example seen once in the epoch
        assert np.allclose(a.prob.astype(np.float32), b.prob.astype(np.float32), atol=0.02)
        assert (a.correct == b.correct).mean() >= 0.98
    assert rows[1]["train_accuracy"] == pytest.approx(ranked[0].correct.mean(), abs=1e-9)
    # the layers' health: each rank's half of a sampled batch, summed — the dead fraction one process finds
    ranked_health, alone_health = load_health(runs[0]), load_health(single_run.run_dir)
    for a, b in zip(ranked_health, alone_health, strict=True):
        assert a.modules == b.modules and len(a.times) == len(b.times) == 1  # 16 steps of 128, every 50th
        assert np.array_equal(a.hist.sum(axis=2), b.hist.sum(axis=2))  # every output of the same batches counted
        relu = a.modules.index("features.fc1.1")
        assert abs(a.dead[relu] - b.dead[relu]) <= 1 / 128, (a.dead[relu], b.dead[relu])
        np.testing.assert_allclose(a.mean, b.mean, rtol=0.05, atol=0.01)


def test_one_process_under_torchrun_joins_a_group_and_trains_as_alone(tmp_path: Path) -> None:
    """torchrun --nproc_per_node 1 goes through the process group (gloo here, NCCL on a GPU) and
    DistributedDataParallel, and ends with the weights a plain single process reaches."""
    proc = torchrun(tmp_path, *ARGS, "--set", "train.epochs=1", nproc=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "ranks" / "backend0.txt").read_text() == "gloo"
    ranked = torch.load(tmp_path / "ranks" / "rank0.pt", weights_only=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the torchrun process had (OMP_NUM_THREADS=1): the same sums in the same order
    try:
        alone = fit(quick_config("train.epochs=1", "data.train_limit=2000"), save_dir=tmp_path / "alone")
    finally:
        torch.set_num_threads(threads)
    weights = load_checkpoint(alone.run_dir / "checkpoints" / "last.pt")["model"]
    assert all(torch.allclose(weights[k], ranked[k], rtol=1e-5, atol=1e-6) for k in ranked)


def test_resume_under_torchrun_is_bit_exact(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    straight = torchrun(tmp_path / "a", *ARGS, "--set", "train.epochs=2")
    assert straight.returncode == 0, straight.stderr[-3000:]
    first = torchrun(tmp_path / "b", *ARGS, "--set", "train.epochs=1")
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = torchrun(tmp_path / "b", *ARGS, "--resume", "save/mnist-mlp", "--set", "train.epochs=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_checkpoint(tmp_path / "a" / "save" / "mnist-mlp" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "save" / "mnist-mlp" / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for epoch in (1, 2):  # the per-example dynamics and the layers' health too
        name = f"save/mnist-mlp/training/epoch_{epoch:03d}.npz"
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_a_mistake_under_torchrun_is_one_line(tmp_path: Path) -> None:
    proc = torchrun(tmp_path, *ARGS, "--set", "model.arch=nosuchmodule:build")
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: model.arch 'nosuchmodule:build': cannot import module 'nosuchmodule' "
                      "(ModuleNotFoundError: No module named 'nosuchmodule')"]
    import interp

    # no traceback through interp's code (torchrun reports the exit itself); the package's own folder, not a
    # path fragment that the checkout's folder name may also hold
    assert str(Path(interp.__file__).parent) not in proc.stderr


def test_a_dead_rank_ends_every_rank_with_the_resume_line(tmp_path: Path) -> None:
    """Rank 1 is killed while rank 0 runs a slow stage after epoch 1: torchrun stops rank 0, which prints the
    resume command; nothing hangs."""
    import signal
    import time

    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not on PATH")
    (tmp_path / "slow.py").write_text(
        "import os, time\nfrom interp.stages import Stage\n"
        "class Slow(Stage):\n    name = 'slow'\n    description = 'sleeps'\n    needs = frozenset()\n"
        "    def run(self, ctx):\n        if ctx.epoch >= 1:\n            open('sleeping', 'w').close()\n"
        "            time.sleep(120)\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1", "INTERP_TEST_OUT": str(tmp_path)}
    proc = subprocess.Popen(["torchrun", "--standalone", "--nproc_per_node", "2", str(HELPER), "train",
                             "--set", "train.device=cpu", "--set", "data.train_limit=500", "--set", "train.epochs=3",
                             "--set", "analysis.stages=['slow:Slow']"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 180
    while not (tmp_path / "sleeping").exists() and time.time() < deadline:
        time.sleep(0.2)
    workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                              text=True).stdout.split()]
    assert len(workers) == 2, workers
    os.kill(max(workers), signal.SIGKILL)  # the second worker started last: rank 1
    started = time.time()
    _, err = proc.communicate(timeout=120)
    assert time.time() - started < 60  # no hang
    assert proc.returncode != 0
    assert "the last finished epoch is saved: continue with interp train --resume save/mnist-mlp" in err
    assert load_checkpoint(tmp_path / "save" / "mnist-mlp" / "checkpoints" / "last.pt")["epoch"] == 0
