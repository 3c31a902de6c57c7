"""Training health, measured: what recording it costs, and what it finds in runs with a known problem.

Overhead: the trainer's epoch of `interp train` without its analysis stages (training and evaluation
passes, the metrics row, last.pt, the dataset map's recording — on by default — and the epoch's training
record) with the layers' health recorded — every `every`-th optimiser step (the
default 50): each Linear/ReLU's outputs summarised and histogrammed, each parameter's gradient norm and
update ratio, the epoch's record written — and without, alternating epoch by epoch in one process; the
ratio of the medians (target ≤ 1.03).

Findings: `interp train` (the default MLP on the bundled sample, 5 epochs, the health stage only) as it comes,
at lr 0.05, as eight sigmoid layers, and SGD at lr 1 — each run's dead fraction, accuracy and findings.

    python benchmarks/health.py [--only overhead|findings] [--epochs 10] [--repeats 5] [--images 60000]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from overhead import alternated_epochs  # noqa: E402

from interp.analysis.health import EVERY, Health, diagnose, epochs_text, load_health  # noqa: E402
from interp.config import load_config  # noqa: E402
from interp.train import fit  # noqa: E402

RUNS = {
    "default (Adam, lr 1e-3)": [],
    "Adam, lr 0.05": ["train.lr=0.05"],
    "SGD, lr 1": ["train.optimizer=sgd", "train.lr=1"],
    "eight sigmoid layers": ["model.activation=sigmoid", "model.hidden=[64,64,64,64,64,64,64,64]"],
}


def overhead(epochs: int, repeats: int, images: int | None, every: int, folder: Path) -> None:
    from interp.analysis.dynamics import Dynamics

    def dataset_map(data):  # type: ignore[no-untyped-def]  # on by default: both sides record it
        return {"dynamics": Dynamics(data.train_y, len(data.classes))}

    on, off, n, count = alternated_epochs(lambda data: ("health", Health(every=every)), epochs * repeats, images,
                                          folder, base=dataset_map)
    assert len(load_health(folder / "overhead")) == count
    print(f"health recording overhead (every {every} steps), {n:,} training examples, median of {count} epochs "
          "each, alternated:")
    print(f"  an interp train epoch without stages (training, evaluation, metrics, last.pt, the dataset map's "
          f"recording) with the health "
          f"recording {on * 1000:.1f} ms, without {off * 1000:.1f} ms: ratio {on / off:.3f} (target ≤ 1.03)")


def findings(epochs: int, folder: Path) -> None:
    for label, overrides in RUNS.items():
        cfg = load_config(None, ["train.device=cpu", f"train.epochs={epochs}", "analysis.stages=[health]",
                                 "analysis.drawing_worker=false", *overrides])
        with contextlib.redirect_stdout(io.StringIO()):
            result = fit(cfg, save_dir=folder / label.split(" ")[0].lower())
        history = load_health(result.run_dir)
        last = history[-1]
        dead = {name: f"{last.dead[m]:.0%}" for m, (name, kind) in enumerate(zip(last.modules, last.kinds, strict=True))
                if kind == "ReLU"}
        print(f"{label}: eval accuracy {result.metrics[-1]['eval_accuracy']:.3f}"
              + (f", dead units at epoch {last.epoch}: {dead}" if dead else ""))
        found = diagnose(history)
        for f in found:
            print(f"  {f.rule}: {f.layer} (epochs {epochs_text(f.epochs)}; {f.evidence})")
        if not found:
            print("  no findings")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--every", type=int, default=EVERY)
    parser.add_argument("--images", type=int, default=None, help="tile the sample to this many training digits "
                        "for the overhead part")
    parser.add_argument("--only", choices=("overhead", "findings"), default=None)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "overhead"):
            overhead(args.epochs, args.repeats, args.images, args.every, Path(tmp))
        if args.only in (None, "findings"):
            findings(5, Path(tmp))


if __name__ == "__main__":
    main()
