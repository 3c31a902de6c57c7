"""Influence, measured: a copied evaluation image found, shifted labels found against cleanlab, and the cost.

- copy: evaluation images 0–9 placed, with their labels, among the bundled sample's training digits (the
  default MLP, 5 epochs): where each copy ranks among its original's proponents by the gradient cosine (the
  default) and by the raw TracIn score.
- precision: 10 % of the training labels shifted (the dataset map's task): precision among the top K (K =
  the number shifted) of self-influence (fast; and full gradients from snapshots), of the dataset map's −AUM
  from the same training, and of cleanlab on 5-fold cross-validated probabilities.
- cost: the stage's seconds at the final analysis beside a training epoch, for the MLP on 5,000 and 60,000
  digits (the sample tiled) and the all-conv net (width 32) on 5,000.

    pip install cleanlab     # the reference, for the precision part
    python benchmarks/influence.py [--only copy|precision|cost] [--epochs 10] [--noise 0.1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from dataset_map import cross_validated_probs  # noqa: E402
from overhead import write_tiled_mnist  # noqa: E402

from interp.analysis.influence import read_checkpoints, tracin  # noqa: E402
from interp.analysis.records import read_record  # noqa: E402
from interp.config import load_config  # noqa: E402
from interp.data import flip_labels, load_data  # noqa: E402
from interp.run import Run  # noqa: E402
from interp.train import fit  # noqa: E402
from interp.train.fit import load_model  # noqa: E402

fit_module = sys.modules["interp.train.fit"]  # the module (interp.train.fit the name is the function)


def quiet_fit(overrides: list[str], folder: Path, name: str) -> Path:
    with contextlib.redirect_stdout(io.StringIO()):
        return fit(load_config(None, ["train.device=cpu", *overrides]), save_dir=folder, name=name).run_dir


def copy(folder: Path, epochs: int = 5) -> None:
    copies = 10
    places = [int(p) for p in np.random.default_rng(0).choice(5000, copies, replace=False)]
    original = fit_module.load_data

    def with_copies(cfg, seed, **kwargs):  # type: ignore[no-untyped-def]
        data = original(cfg, seed, **kwargs)
        for i, place in enumerate(places):
            data.train_x[place] = data.eval_x[i]
            data.train_y[place] = data.eval_y[i]
        return data

    fit_module.load_data = with_copies
    try:
        run = quiet_fit([f"train.epochs={epochs}", "analysis.stages=[]"], folder, "copies")
        _, model, data, _, _ = load_model(Run(run), "last")
    finally:
        fit_module.load_data = original
    found = tracin(model, data, torch.arange(copies), read_checkpoints(run))
    ranks = {}
    for score in ("cosine", "raw"):
        scores = found.scores(score)
        ranks[score] = [int((scores[i] > scores[i, place]).sum()) + 1 for i, place in enumerate(places)]
    print(f"copies of evaluation images 0–{copies - 1} among 5,000 training digits (default MLP, {epochs} epochs, "
          "fast variant): the copy's rank among its original's proponents")
    for score in ("cosine", "raw"):
        print(f"  by {score:6s}: {ranks[score]} (first in {sum(r == 1 for r in ranks[score])} of {copies}, "
              f"median {int(np.median(ranks[score]))})")


def precision(folder: Path, epochs: int, noise: float) -> None:
    cfg = load_config(None, [f"train.epochs={epochs}", "train.device=cpu", f"data.label_noise={noise}"])
    clean = load_data(load_config(None, []).data, cfg.seed).train_y
    noisy, shifted = flip_labels(clean, noise, 10, cfg.seed)
    k = len(shifted)
    run = quiet_fit([f"train.epochs={epochs}", f"data.label_noise={noise}", "analysis.snapshots=true",
                     "analysis.stages=[dataset_map, influence]", f"analysis.every={epochs}"], folder, "noisy")
    final = run / f"epoch_{epochs:03d}"
    own = read_record(final / "influence" / "record.npz").data["self_influence"]
    aum = read_record(final / "dataset_map" / "record.npz").data["examples"]["score"]

    def at_k(score: np.ndarray) -> float:
        return float(np.isin(np.argsort(-np.asarray(score), kind="stable")[:k], shifted.numpy()).mean())

    print(f"{k} of {len(clean)} training labels shifted; default MLP, {epochs} epochs, one training")
    print(f"  self-influence, fast (the classifier's gradients): precision@{k} {at_k(own):.3f}")
    _, model, data, _, _ = load_model(Run(run), "last")
    started = time.perf_counter()
    full = tracin(model, data, torch.tensor([0]), read_checkpoints(run), variant="full", batch_size=500)
    print(f"  self-influence, full gradients (snapshots): precision@{k} {at_k(full.self_influence):.3f} "
          f"({time.perf_counter() - started:.0f} s)")
    print(f"  dataset map, −AUM:                       precision@{k} {at_k(aum):.3f}")
    try:
        from cleanlab.rank import get_label_quality_scores
    except ImportError:
        print("  cleanlab: not installed (pip install cleanlab) — no reference measured")
        return
    probs = cross_validated_probs(cfg, noisy)
    print(f"  cleanlab label quality, 5-fold cross-validation: precision@{k} "
          f"{at_k(-get_label_quality_scores(noisy.numpy(), probs)):.3f}")


def cost(folder: Path) -> None:
    cases = [("MLP, 5,000 digits", "mlp", []), ("all-conv (width 32), 5,000 digits", "allconv", ["model.width=32"])]
    tiled = folder / "tiled"
    write_tiled_mnist(tiled, 60000)
    cases.append(("MLP, 60,000 digits (the sample tiled)", "mlp",
                  ["data.dataset=mnist", f"data.root={tiled}", "data.download=false"]))
    print("the influence stage at the final analysis (fast variant; 10 probe + 8 highest-loss images) beside a "
          "training epoch:")
    for i, (what, arch, extra) in enumerate(cases):
        run = quiet_fit([f"model.arch={arch}", "train.epochs=2", "analysis.stages=[influence]", *extra], folder,
                        f"cost{i}")
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        epoch = np.median([r["seconds"] for r in rows if r["epoch"] > 0])
        print(f"  {what}: stage {rows[-1]['seconds/influence']:.2f} s, a training epoch {epoch:.2f} s "
              f"(ratio {rows[-1]['seconds/influence'] / epoch:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["copy", "precision", "cost"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--noise", type=float, default=0.1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args.only in (None, "copy"):
            copy(folder)
        if args.only in (None, "precision"):
            precision(folder, args.epochs, args.noise)
        if args.only in (None, "cost"):
            cost(folder)


if __name__ == "__main__":
    main()
