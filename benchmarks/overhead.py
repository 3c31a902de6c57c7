"""Training overhead of `interp train` (stages off) against the plainest PyTorch tensor loop.

Both run in this one process, on the same tensors, model, batch size, optimiser and epochs, and both
train and then evaluate every epoch. Prints seconds per epoch side by side and their ratio (target ≤ 1.05).

    python benchmarks/overhead.py                       # MLP and all-conv on MNIST-shaped data
    python benchmarks/overhead.py --images 60000 --width 96
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

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from conftest import write_idx  # noqa: E402  (writes MNIST's IDX format)
from interp.cli import RichReporter  # noqa: E402
from interp.config import DataConfig, load_config  # noqa: E402
from interp.data import load_data  # noqa: E402
from interp.models import build_model  # noqa: E402
from interp.train import fit  # noqa: E402


def write_tiled_mnist(root: Path, images: int) -> None:
    """Tile the bundled sample up to ``images`` training digits, in torchvision's raw MNIST layout."""
    sample = load_data(DataConfig(dataset="mnist-sample"))
    reps = -(-images // len(sample.train_x))
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "train-images-idx3-ubyte", sample.train_x[:, 0].repeat(reps, 1, 1)[:images].numpy())
    write_idx(raw / "train-labels-idx1-ubyte", sample.train_y.repeat(reps)[:images].numpy().astype(np.uint8))
    write_idx(raw / "t10k-images-idx3-ubyte", sample.eval_x[:, 0].numpy())
    write_idx(raw / "t10k-labels-idx1-ubyte", sample.eval_y.numpy().astype(np.uint8))


def alternated_epochs(recorder, epochs: int, images: int | None, folder: Path,  # type: ignore[no-untyped-def]
                      overrides: tuple[str, ...] = (), base=None) -> tuple[float, float, int, int]:
    """An epoch of `interp train` without its analysis stages — the Trainer's own epoch: the training pass, the
    evaluation pass, the row in metrics.jsonl and TensorBoard, last.pt (and best.pt when it improved) — with a
    training recorder and without, alternating epoch by epoch on one model in this one process, one torch thread
    (what a CPU run beside the drawing worker has). ``recorder(data)`` gives the Trainer's attribute and the
    recorder (``("dynamics", Dynamics(…))``); ``base(data)``, recorders both sides have (``{"dynamics": …}``).
    Returns the median seconds with and without, the training examples and the epochs each."""
    from interp.data import select_probe
    from interp.run import Run
    from interp.train.callbacks import CheckpointCallback, RunLogger, TrainingRecords
    from interp.train.fit import loss_function, make_optimizer
    from interp.train.loop import Trainer

    extra: list[str] = list(overrides)
    if images:
        root = folder / "tiled"
        write_tiled_mnist(root, images)
        extra += ["data.dataset=mnist", f"data.root={root}", "data.download=false"]
    cfg = load_config(None, ["train.device=cpu", *extra])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(cfg.seed)
    data = load_data(cfg.data, cfg.seed)
    probe = select_probe(data, 1, cfg.seed)
    model = build_model(cfg.model, data.input_shape, len(data.classes))
    run, _ = Run.create(folder, "overhead")
    attribute, recording = recorder(data)
    always = base(data) if base is not None else {}
    trainer = Trainer(model, data, probe, make_optimizer(cfg, model), loss_function(data),
                      torch.Generator().manual_seed(cfg.seed), epochs=epochs * 2,
                      batch_size=cfg.data.batch_size, eval_batch_size=cfg.data.eval_batch_size,
                      callbacks=[TrainingRecords(run), RunLogger(run), CheckpointCallback(run, cfg.model_dump(mode="json"))],
                      **always)
    seconds: dict[str, list[float]] = {"on": [], "off": []}
    epoch = 0
    for r in range(epochs):
        for mode in ("off", "on") if r % 2 else ("on", "off"):
            epoch += 1
            setattr(trainer, attribute, recording if mode == "on" else None)
            started = time.perf_counter()
            trainer.run_epoch(epoch)
            seconds[mode].append(time.perf_counter() - started)
    run.close()
    torch.set_num_threads(threads)
    return statistics.median(seconds["on"]), statistics.median(seconds["off"]), len(data.train_x), epochs


def plain_epochs(cfg, epochs: int, device: torch.device | None = None, *, channels_last: bool = False,  # type: ignore[no-untyped-def]
                 compiled: bool = False) -> list[tuple[float, float]]:
    """The plainest tensor loop: pre-normalized float tensors on the device, randperm batches, autocast when
    cfg.train.precision asks for it, no logging; optionally channels_last and torch.compile. Returns, per
    epoch, the seconds of its training pass and of the whole epoch (training + evaluation)."""
    device = device or torch.device("cpu")
    data = load_data(cfg.data)
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    train_x = ((data.train_x.float() / 255 - mean) / std).to(device).contiguous(memory_format=layout)
    eval_x = ((data.eval_x.float() / 255 - mean) / std).to(device).contiguous(memory_format=layout)
    train_y, eval_y = data.train_y.to(device), data.eval_y.to(device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, data.input_shape, 10).to(device, memory_format=layout)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    trained = torch.compile(model) if compiled else model
    loss_fn = nn.CrossEntropyLoss()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    bs, ebs = cfg.data.batch_size, cfg.data.eval_batch_size
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_x), device=device)
        for i in range(0, len(train_x), bs):
            index = order[i:i + bs]
            with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
                logits = trained(train_x[index])
            loss = loss_fn(logits.float(), train_y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        trained_at = time.perf_counter()
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(eval_x[i:i + ebs]).argmax(1) == eval_y[i:i + ebs]).sum())
                          for i in range(0, len(eval_x), ebs))
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((trained_at - start, time.perf_counter() - start))
        assert correct >= 0
    return times


def plain_loop(cfg, epochs: int, device: torch.device | None = None) -> list[float]:  # type: ignore[no-untyped-def]
    """Seconds per epoch (training + evaluation) of :func:`plain_epochs`."""
    return [whole for _, whole in plain_epochs(cfg, epochs, device)]


def interp_loop(cfg, epochs: int, save_dir: Path) -> list[float]:  # type: ignore[no-untyped-def]
    reporter = RichReporter()
    reporter.console.file = io.StringIO()  # progress bars are drawn, into a buffer
    result = fit(cfg, save_dir=save_dir, reporter=reporter)
    return [row["seconds"] for row in result.metrics if row["epoch"] > 0][:epochs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=60_000, help="training images (the sample, tiled)")
    parser.add_argument("--conv-images", type=int, default=10_000, help="training images for the all-conv net")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=int, default=16, help="all-conv width (96 = All-CNN-C; slow on a CPU)")
    parser.add_argument("--models", nargs="+", default=["mlp", "allconv"])
    parser.add_argument("--repeats", type=int, default=4, help="alternations of the two loops")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    print("seconds per epoch (train + evaluate): median over all epochs, and the fastest epoch")
    print(f"{'model':<22}{'images':>8}{'plain':>10}{'interp':>10}{'ratio':>8}{'plain min':>11}{'interp min':>11}"
          f"{'ratio':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.models:
            images = args.images if arch == "mlp" else args.conv_images
            root = Path(tmp) / f"data-{arch}"
            write_tiled_mnist(root, images)
            cfg = load_config(None, [f"model.arch={arch}", f"model.width={args.width}", "data.dataset=mnist",
                                     f"data.root={root}", "data.download=false", "train.device=cpu",
                                     f"train.epochs={args.epochs}", "analysis.stages=[]"])
            # alternate the two so that drift in machine speed hits both alike
            plain, ours = [], []
            for repeat in range(args.repeats):
                plain += plain_loop(cfg, args.epochs)
                ours += interp_loop(cfg, args.epochs, Path(tmp) / f"save-{arch}-{repeat}")
            p, o = statistics.median(plain), statistics.median(ours)
            pm, om = min(plain), min(ours)
            label = arch if arch == "mlp" else f"allconv (width {args.width})"
            print(f"{label:<22}{images:>8}{p:>10.3f}{o:>10.3f}{o / p:>8.3f}{pm:>11.3f}{om:>11.3f}{om / pm:>8.3f}")


if __name__ == "__main__":
    main()
