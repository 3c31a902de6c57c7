"""The dataset map, measured: finding shifted labels against cleanlab, and what recording costs.

Precision: the bundled sample with 10 % of the training labels shifted to another class (data.label_noise,
seeded), the default MLP trained 10 epochs by `interp train`; the label-issue ranking (−AUM) from that one
ordinary training, against cleanlab's find_label_issues on 5-fold cross-validated probabilities of the
same model with the same recipe (five more trainings). Precision among the top K, K = the number shifted.

Overhead: an epoch of `interp train` without its analysis stages (the Trainer's epoch: the training and
evaluation passes, the metrics row, last.pt) with the dataset map's recording — and its per-epoch record written — and without, alternating
epoch by epoch on one model in this one process; the ratio of the medians (target ≤ 1.02).

Examples: `interp examples` on a dataset map of 60,000 training examples (target: well under a second).

    pip install cleanlab     # the reference, for the precision part
    python benchmarks/dataset_map.py [--epochs 10] [--noise 0.1] [--repeats 5] [--images 60000]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from overhead import alternated_epochs  # noqa: E402

from interp.analysis.dynamics import cartography, load_history  # noqa: E402
from interp.config import load_config  # noqa: E402
from interp.data import flip_labels, load_data  # noqa: E402
from interp.models import build_model  # noqa: E402
from interp.train import fit  # noqa: E402
from interp.train.fit import make_optimizer  # noqa: E402


def cross_validated_probs(cfg, labels: torch.Tensor, folds: int = 5) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Out-of-fold softmax probabilities of cfg's model trained with cfg's recipe on the other folds."""
    data = load_data(cfg.data, cfg.seed)
    x = data.normalize(data.train_x)
    n = len(x)
    fold_of = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed)) % folds
    probs = np.zeros((n, len(data.classes)), dtype=np.float64)
    for k in range(folds):
        inside, held = torch.nonzero(fold_of != k)[:, 0], torch.nonzero(fold_of == k)[:, 0]
        torch.manual_seed(cfg.seed + k)
        model = build_model(cfg.model, data.input_shape, len(data.classes))
        optimizer = make_optimizer(cfg, model)
        generator = torch.Generator().manual_seed(cfg.seed + k)
        for _ in range(cfg.train.epochs):
            model.train()
            order = inside[torch.randperm(len(inside), generator=generator)]
            for start in range(0, len(order), cfg.data.batch_size):
                batch = order[start:start + cfg.data.batch_size]
                loss = torch.nn.functional.cross_entropy(model(x[batch]), labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        model.eval()
        with torch.no_grad():
            probs[held.numpy()] = torch.softmax(model(x[held]), dim=1).double().numpy()
    return probs


def precision(epochs: int, noise: float, folder: Path) -> None:
    cfg = load_config(None, [f"train.epochs={epochs}", "train.device=cpu", f"data.label_noise={noise}",
                             "analysis.stages=[dataset_map]", f"analysis.every={epochs}"])
    clean = load_data(load_config(None, []).data, cfg.seed).train_y
    noisy, shifted = flip_labels(clean, noise, 10, cfg.seed)
    k = len(shifted)
    with contextlib.redirect_stdout(io.StringIO()):
        run = fit(cfg, save_dir=folder, name="noisy").run_dir
    columns = cartography(load_history(run))
    ours = np.argsort(-columns["score"], kind="stable")[:k]
    ours_precision = float(np.isin(ours, shifted.numpy()).mean())
    flagged = np.flatnonzero(columns["flagged"])
    print(f"{k} of {len(clean)} training labels shifted; default MLP, {epochs} epochs")
    print(f"interp, one training (−AUM):           precision@{k} {ours_precision:.3f}; flagged {len(flagged)} "
          f"({np.isin(flagged, shifted.numpy()).mean():.3f} of them shifted, "
          f"{columns['flagged'][shifted.numpy()].mean():.3f} of the shifted flagged)")
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        print("cleanlab: not installed (pip install cleanlab) — no reference measured")
        return
    started = time.perf_counter()
    probs = cross_validated_probs(cfg, noisy)
    seconds = time.perf_counter() - started
    issues = find_label_issues(noisy.numpy(), probs, return_indices_ranked_by="self_confidence")
    scores = get_label_quality_scores(noisy.numpy(), probs)
    ranked = np.argsort(scores, kind="stable")[:k]
    print(f"cleanlab, 5-fold cross-validation ({seconds:.0f} s of extra training):")
    print(f"  find_label_issues: {len(issues)} issues, precision@{k} {np.isin(issues[:k], shifted.numpy()).mean():.3f}")
    print(f"  label quality ranking:               precision@{k} {np.isin(ranked, shifted.numpy()).mean():.3f}")


def overhead(epochs: int, repeats: int, images: int | None, folder: Path) -> None:
    """The trainer's epoch with the dataset map's recording (every step's logits kept, the epoch's numbers
    computed and moved to the host, its record encoded and written atomically) and without."""
    from interp.analysis.dynamics import Dynamics

    def recorder(data):  # type: ignore[no-untyped-def]
        return "dynamics", Dynamics(data.train_y, len(data.classes))

    on, off, n, count = alternated_epochs(recorder, epochs * repeats, images, folder)
    assert len(list((folder / "overhead" / "training").glob("epoch_*.npz"))) == count
    print(f"recording overhead, {n:,} training examples, median of {count} epochs each, alternated:")
    print(f"  an interp train epoch without stages (training, evaluation, metrics, last.pt) with the dataset map's "
          f"recording {on * 1000:.1f} ms, without {off * 1000:.1f} ms: ratio {on / off:.3f} (target ≤ 1.02)")


def examples_speed(size: int, folder: Path) -> None:
    """`interp examples` on a dataset map of ``size`` training examples (a record of random columns, written as
    the stage writes it): the whole command, process start included, and the ranking alone."""
    import subprocess

    from interp.analysis.examples import ranked_examples
    from interp.analysis.records import Record, encode_record
    from interp.analysis.sink import write_atomic

    rng = np.random.default_rng(0)
    prob = rng.random((10, size)).astype(np.float16)
    from interp.analysis.dynamics import EpochDynamics

    epochs = [EpochDynamics(e + 1, prob[e], (prob[e].astype(np.float32) * 8 - 4).astype(np.float16), prob[e] > 0.5,
                            rng.integers(0, 10, size).astype(np.int32)) for e in range(10)]
    columns = cartography(epochs)
    run = folder / "big"
    record = Record(stage="dataset_map", epoch=10, data={"examples": {"index": np.arange(size), "label":
                    rng.integers(0, 10, size), **columns}, "classes": [str(c) for c in range(10)], "size": size})
    (run / "epoch_010" / "dataset_map").mkdir(parents=True)
    write_atomic(run / "epoch_010" / "dataset_map" / "record.npz", encode_record(record))
    started = time.perf_counter()
    ranked_examples(run, "label_issues", 20)
    alone = time.perf_counter() - started
    timings = {}
    for what, args in (("interp --help", ["--help"]), ("interp examples", ["examples", str(run), "--json"])):
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "interp", *args], check=True, capture_output=True)
            runs.append(time.perf_counter() - started)
        timings[what] = min(runs)
    print(f"interp examples on {size:,} training examples: {timings['interp examples']:.2f} s for the whole command "
          f"(interp --help: {timings['interp --help']:.2f} s), the ranking alone {alone * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=None, help="tile the sample to this many training digits "
                        "for the overhead part")
    parser.add_argument("--only", choices=("precision", "overhead", "examples"), default=None)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "precision"):
            precision(args.epochs, args.noise, Path(tmp))
        if args.only in (None, "overhead"):
            overhead(args.epochs, args.repeats, args.images, Path(tmp))
        if args.only in (None, "examples"):
            examples_speed(60_000, Path(tmp))


if __name__ == "__main__":
    main()
