"""Feature visualisation, measured: are the class images natural, or adversarial to the one network?

Three all-conv nets (width 32, 3 epochs on the bundled sample) trained by `interp train` with seeds 0, 1 and 2;
each class's image optimised for one net (`interp.visualize`, defaults, two visualisation seeds) is classified by
the next (0 by 1, 1 by 2, 2 by 0). A majority of the ten classified as intended says the images carry the class,
not one network's quirks.

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
        for seed in (0, 1, 2):
            cfg = load_config(None, ["train.device=cpu", f"seed={seed}", "model.arch=allconv",
                                     f"model.width={args.width}", f"train.epochs={args.epochs}",
                                     "analysis.stages=[]"])
            with contextlib.redirect_stdout(io.StringIO()):
                run = fit(cfg, save_dir=Path(tmp), name=f"seed{seed}").run_dir
            _, model, data, _, _ = load_model(Run(run), "last")
            models.append(model.eval())
        classes = list(range(len(data.classes)))
        counts = []
        for net in range(3):
            first, second = models[net], models[(net + 1) % 3]
            for seed in (0, 1):
                started = time.perf_counter()
                images = visualize(first, target=classes, input_shape=tuple(data.input_shape), mean=data.mean,
                                   std=data.std, seed=seed)
                seconds = time.perf_counter() - started
                with torch.no_grad():
                    own = torch.softmax(first(images), dim=1).diag()
                    other = torch.softmax(second(images), dim=1)
                right = int((other.argmax(dim=1) == torch.tensor(classes)).sum())
                counts.append(right)
                print(f"net {net}, visualisation seed {seed} ({seconds:.1f} s for ten classes): its probability of "
                      f"the class {own.mean():.2f}; net {(net + 1) % 3} classifies {right} of 10 as intended "
                      f"(its mean probability {other.diag().mean():.2f})")
        print(f"classified as intended: {counts}, mean {sum(counts) / len(counts):.1f} of 10, "
              f"fewest {min(counts)}")


if __name__ == "__main__":
    main()
