"""Feature visualisation, measured: are the class images natural, or adversarial to the one network?

Two all-conv nets (width 32, 3 epochs on the bundled sample) trained by `interp train` with seeds 0 and 1;
each class's image optimised for the first (`interp.visualize`, defaults) is classified by the second. A
majority of the ten classified as intended says the images carry the class, not one network's quirks.

    python benchmarks/feature_visualization.py [--epochs 3] [--width 32]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
import time
from pathlib import Path

import torch

from interp import visualize
from interp.config import load_config
from interp.run import Run
from interp.train import fit
from interp.train.fit import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--width", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        models = []
        for seed in (0, 1):
            cfg = load_config(None, ["train.device=cpu", f"seed={seed}", "model.arch=allconv",
                                     f"model.width={args.width}", f"train.epochs={args.epochs}",
                                     "analysis.stages=[]"])
            with contextlib.redirect_stdout(io.StringIO()):
                run = fit(cfg, save_dir=Path(tmp), name=f"seed{seed}").run_dir
            _, model, data, _, _ = load_model(Run(run), "last")
            models.append(model.eval())
        first, second = models
        classes = list(range(len(data.classes)))
        for seed in (0, 1):
            started = time.perf_counter()
            images = visualize(first, target=classes, input_shape=tuple(data.input_shape), mean=data.mean,
                               std=data.std, seed=seed)
            seconds = time.perf_counter() - started
            with torch.no_grad():
                own = torch.softmax(first(images), dim=1).diag()
                other = torch.softmax(second(images), dim=1)
            right = int((other.argmax(dim=1) == torch.tensor(classes)).sum())
            print(f"visualisation seed {seed} ({seconds:.1f} s for ten classes): the first net's probability of the "
                  f"class {own.mean():.2f}; the second net classifies {right} of 10 as intended "
                  f"(its mean probability {other.diag().mean():.2f})")


if __name__ == "__main__":
    main()
