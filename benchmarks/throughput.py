"""Training throughput of `interp train` against the plainest tensor loop, and what the stages cost.

Both loops run in this one process on the same device, model, precision, tensors and batch size:

- images per second of an epoch (train + evaluate), interp with its stages off, the plain loop, their ratio;
- the seconds per epoch that the default stages block the training loop, and that as a share of the epoch.

    python benchmarks/throughput.py                                   # all-conv (width 16), CPU
    python benchmarks/throughput.py --device cuda --precision bf16 --width 96 --images 60000
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from overhead import plain_loop, write_tiled_mnist  # noqa: E402

from interp.cli import RichReporter  # noqa: E402
from interp.config import load_config  # noqa: E402
from interp.stages import default_stage_specs  # noqa: E402
from interp.train import fit  # noqa: E402


def interp_rows(cfg, save_dir: Path) -> list[dict]:  # type: ignore[no-untyped-def]
    reporter = RichReporter()
    reporter.console.file = io.StringIO()
    return [row for row in fit(cfg, save_dir=save_dir, reporter=reporter).metrics if row["epoch"] > 0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="training images (the bundled sample, tiled)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--width", type=int, default=16, help="all-conv width (96 = All-CNN-C)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        write_tiled_mnist(root, args.images)
        base = ["model.arch=allconv", f"model.width={args.width}", "data.dataset=mnist", f"data.root={root}",
                "data.download=false", f"train.device={args.device}", f"train.epochs={args.epochs}",
                f"train.precision={args.precision}"]
        no_stages = load_config(None, [*base, "analysis.stages=[]"])
        plain, ours = [], []
        for repeat in range(args.repeats):  # alternated, so that drift in machine speed hits both alike
            plain += plain_loop(no_stages, args.epochs, device)
            ours += [row["seconds"] for row in interp_rows(no_stages, Path(tmp) / f"plain-{repeat}")]
        stages = f"analysis.stages={default_stage_specs()}".replace("'", "")
        staged = {worker: interp_rows(load_config(None, [*base, stages, f"analysis.drawing_worker={worker}"]),
                                      Path(tmp) / f"stages-{worker}") for worker in (False, True)}

    n = args.images
    p, o = statistics.median(plain), statistics.median(ours)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, {args.precision}; "
          f"all-conv width {args.width}, {n:,} training images, {args.epochs} epochs × {args.repeats}")
    print(f"{'images/s (train + evaluate)':<34}{'plain':>10}{'interp':>10}{'interp/plain':>14}")
    print(f"{'median epoch':<34}{n / p:>10,.0f}{n / o:>10,.0f}{(n / o) / (n / p):>14.3f}")
    print(f"{'fastest epoch':<34}{n / min(plain):>10,.0f}{n / min(ours):>10,.0f}{min(plain) / min(ours):>14.3f}")
    print("seconds per epoch the default stages block the training loop, as a share of the epoch:")
    print(f"{'':<12}{'epoch s':>9}{'drawn in the loop':>22}{'drawing worker':>20}")
    for inline, worker in zip(staged[False], staged[True], strict=True):
        blocked = [sum(v for k, v in row.items() if k.startswith("seconds/")) for row in (inline, worker)]
        cells = [f"{b:.2f} s ({100 * b / inline['seconds']:.1f} %)" for b in blocked]
        print(f"  epoch {inline['epoch']:<4}{inline['seconds']:>9.2f}{cells[0]:>22}{cells[1]:>20}")


if __name__ == "__main__":
    main()
