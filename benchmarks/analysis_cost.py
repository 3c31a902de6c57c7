"""How the final analysis grows with the model and the image: seconds per stage beside one training epoch.

The 1,797 digits of scikit-learn (8×8, written as PNGs, 1,437 for training and 360 held out) are read
as an image folder and resized to each size; each model trains one epoch with the default stages, so the
epoch is also the final one (ROAD, the randomization cascade, t-SNE). Prints one row per model and size:
the training epoch's seconds, each stage's seconds at the final epoch, their sum, and the sum ÷ the epoch.

    python benchmarks/analysis_cost.py                              # mlp, allconv, resnet18 × 28, 64, 128
    python benchmarks/analysis_cost.py --models resnet18 --sizes 64
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

MODELS = {"mlp": ["model.arch=mlp"], "allconv": ["model.arch=allconv", "model.width=16"],
          "resnet18": ["model.arch=torchvision:resnet18"]}


def write_digits(root: Path) -> Path:
    """scikit-learn's digits as ``root/train/<digit>/<n>.png`` (interp holds out a fifth, seeded)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        folder = root / "train" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image / 16 * 255).astype(np.uint8)).save(folder / f"{i:04d}.png")
    return root


def run(model: str, size: int, data: Path, save: Path) -> dict:
    from interp.config import load_config
    from interp.train import fit

    overrides = ["data.dataset=folder", f"data.root={data}", f"data.image_size={size}", "train.epochs=1",
                 *MODELS[model]]
    cfg = load_config(None, overrides)
    fit(cfg, save_dir=save, name=f"{model}-{size}")
    rows = [json.loads(line) for line in (save / f"{model}-{size}" / "metrics.jsonl").read_text().splitlines()]
    final = rows[-1]
    return {"epoch": final["seconds"], "stages": {k.split("/", 1)[1]: v for k, v in final.items()
                                                  if k.startswith("seconds/")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[28, 64, 128])
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_digits(Path(tmp) / "digits")
        for model in args.models:
            for size in args.sizes:
                found = run(model, size, data, Path(tmp) / "save")
                results.append({"model": model, "size": size, **found})
                shown = ["trust", "integrated_gradients", "saliency", "attributions", "weights", "embeddings"]
                stages = found["stages"]
                total = sum(stages.values())
                print(f"{model:9} {size:4} px  epoch {found['epoch']:7.1f} s  analysis {total:7.1f} s  "
                      f"(× {total / found['epoch']:5.1f})  " +
                      "  ".join(f"{s} {stages.get(s, 0):.1f}" for s in shown), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
