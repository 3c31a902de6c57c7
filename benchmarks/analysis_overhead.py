"""What the default analysis stages add to an epoch: the all-conv net on 60,000 MNIST-shaped images, CPU.

One run trains twice on the same data, model and seed: once with the default stages, once with none.
Prints seconds per epoch (train + evaluate + stages) side by side, their ratio (target ≤ 1.10), and
each stage's seconds. The last epoch is shown apart: t-SNE and the trust stage's randomization check run
only there.

    python benchmarks/analysis_overhead.py                 # width 16, 3 epochs
    python benchmarks/analysis_overhead.py --width 32 --epochs 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from overhead import write_tiled_mnist  # noqa: E402

from interp.config import load_config  # noqa: E402
from interp.stages import default_stage_specs  # noqa: E402
from interp.train import fit  # noqa: E402


def epoch_seconds(rows: list[dict]) -> list[float]:
    """Per epoch ≥ 1: training + evaluation + every stage that ran after it."""
    return [row["seconds"] + sum(v for k, v in row.items() if k.startswith("seconds/")) for row in rows
            if row["epoch"] > 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=int, default=16)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        write_tiled_mnist(root, args.images)
        base = ["model.arch=allconv", f"model.width={args.width}", "data.dataset=mnist", f"data.root={root}",
                "data.download=false", "train.device=cpu", f"train.epochs={args.epochs}"]
        runs = {}
        for label, stages in (("no stages", "[]"), ("default stages", str(default_stage_specs()).replace("'", ""))):
            cfg = load_config(None, [*base, f"analysis.stages={stages}"])
            runs[label] = fit(cfg, save_dir=Path(tmp) / label.replace(" ", "-")).metrics

    plain, full = epoch_seconds(runs["no stages"]), epoch_seconds(runs["default stages"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; all-conv width {args.width}, "
          f"{args.images:,} training images, {args.epochs} epochs")
    print(f"{'':<26}{'no stages':>12}{'stages':>12}{'ratio':>8}")
    middle_plain, middle_full = statistics.median(plain[:-1] or plain), statistics.median(full[:-1] or full)
    print(f"{'epoch (not the last)':<26}{middle_plain:>12.2f}{middle_full:>12.2f}{middle_full / middle_plain:>8.3f}")
    print(f"{'last epoch':<26}{plain[-1]:>12.2f}{full[-1]:>12.2f}{full[-1] / plain[-1]:>8.3f}")
    print(f"{'whole run (epochs ≥ 1)':<26}{sum(plain):>12.2f}{sum(full):>12.2f}{sum(full) / sum(plain):>8.3f}")
    rows = runs["default stages"]
    # Training time itself varies by a few percent between runs; this ratio uses one run only:
    # (train + evaluate + stages) / (train + evaluate) for the same middle epochs.
    own = [(r["seconds"], sum(v for k, v in r.items() if k.startswith("seconds/"))) for r in rows[1:-1]] or \
        [(rows[-1]["seconds"], 0.0)]
    within = statistics.median((base_s + stage_s) / base_s for base_s, stage_s in own)
    print(f"{'stages within one run':<26}{'':>12}{'':>12}{within:>8.3f}")
    print("\nseconds per stage (epoch 0 / median of the middle epochs / last epoch):")
    for key in [k for k in rows[-1] if k.startswith("seconds/")]:
        middle = [r[key] for r in rows[1:-1] if key in r] or [rows[-1][key]]
        print(f"  {key.removeprefix('seconds/'):<22}{rows[0].get(key, 0):>8.2f}{statistics.median(middle):>8.2f}"
              f"{rows[-1][key]:>8.2f}")


if __name__ == "__main__":
    main()
