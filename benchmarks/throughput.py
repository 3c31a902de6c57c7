"""Training throughput of `interp train` against the plainest tensor loop, and what the stages cost.

Both loops run in this one process on the same device, model, precision, tensors and batch size:

- images per second of an epoch (train + evaluate), interp with its stages off, the plain loop, their ratio;
- the seconds per epoch that the default stages block the training loop, and that as a share of the epoch.

    python benchmarks/throughput.py                                   # all-conv (width 16), CPU
    python benchmarks/throughput.py --device cuda --precision bf16 --width 96 --images 60000
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from overhead import write_tiled_mnist  # noqa: E402

from interp.cli import RichReporter  # noqa: E402
from interp.config import load_config  # noqa: E402
from interp.data import load_data  # noqa: E402
from interp.models import build_model  # noqa: E402
from interp.stages import default_stage_specs  # noqa: E402
from interp.train import fit  # noqa: E402


def plain_loop(cfg, epochs: int, device: torch.device) -> list[float]:  # type: ignore[no-untyped-def]
    """Pre-normalized float tensors on the device, randperm batches, autocast when asked, no logging."""
    data = load_data(cfg.data)
    mean, std = data.mean[0], data.std[0]
    train_x = ((data.train_x.float() / 255 - mean) / std).to(device)
    eval_x = ((data.eval_x.float() / 255 - mean) / std).to(device)
    train_y, eval_y = data.train_y.to(device), data.eval_y.to(device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.input_shape, 10).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    loss_fn = nn.CrossEntropyLoss()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision)
    bs, ebs = cfg.data.batch_size, cfg.data.eval_batch_size
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_x), device=device)
        for i in range(0, len(train_x), bs):
            index = order[i:i + bs]
            with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
                logits = model(train_x[index])
            loss = loss_fn(logits.float(), train_y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(eval_x[i:i + ebs]).argmax(1) == eval_y[i:i + ebs]).sum())
                          for i in range(0, len(eval_x), ebs))
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        assert correct >= 0
    return times


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
        staged = interp_rows(load_config(None, [*base, f"analysis.stages={default_stage_specs()}".replace("'", "")]),
                             Path(tmp) / "stages")

    n = args.images
    p, o = statistics.median(plain), statistics.median(ours)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, {args.precision}; "
          f"all-conv width {args.width}, {n:,} training images, {args.epochs} epochs × {args.repeats}")
    print(f"{'images/s (train + evaluate)':<34}{'plain':>10}{'interp':>10}{'interp/plain':>14}")
    print(f"{'median epoch':<34}{n / p:>10,.0f}{n / o:>10,.0f}{(n / o) / (n / p):>14.3f}")
    print(f"{'fastest epoch':<34}{n / min(plain):>10,.0f}{n / min(ours):>10,.0f}{min(plain) / min(ours):>14.3f}")
    print("seconds per epoch the default stages block the training loop (no drawing worker yet):")
    for row in staged:
        blocked = sum(v for k, v in row.items() if k.startswith("seconds/"))
        print(f"  epoch {row['epoch']}: stages {blocked:.2f} s on an epoch of {row['seconds']:.2f} s "
              f"({100 * blocked / row['seconds']:.1f} %)")


if __name__ == "__main__":
    main()
