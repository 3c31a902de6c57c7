"""interp's stages in a plain PyTorch loop: a torchvision ResNet-18 (random weights) trained on
CIFAR-10-shaped tensors, analysed before training and after every epoch with ``interp.Analyzer``.

    python examples/plain_loop.py --images 1024 --epochs 3 --save-dir save

(The tensors here are random with a learnable signal, so the example runs anywhere; put your own
model and data in their place.)
"""

from __future__ import annotations

import argparse

import torch
import torchvision
from torch import nn

from interp import Analyzer

CLASSES = ["airplane", "automobile", "bird", "cat"]
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def tensors(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10-shaped images (3 × 32 × 32, normalized); each class brightens one quadrant."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(count) % len(CLASSES)
    x = torch.rand(count, 3, 32, 32, generator=g) * 0.5
    for c in range(len(CLASSES)):
        r, q = divmod(c, 2)
        x[y == c, :, 16 * r:16 * r + 16, 16 * q:16 * q + 16] += 0.5
    return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1), y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--save-dir", default="save")
    args = parser.parse_args()

    torch.manual_seed(0)
    x_train, y_train = tensors(args.images, 0)
    x_eval, y_eval = tensors(max(args.images // 4, 8), 1)
    model = torchvision.models.resnet18(weights=None, num_classes=len(CLASSES))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    analyzer = Analyzer(f"{args.save_dir}/resnet", eval_data=(x_eval, y_eval), classes=CLASSES, mean=MEAN, std=STD,
                        stages=["confusion", "saliency", {"integrated_gradients": {"steps": 16}}, "gradcam"],
                        epochs=args.epochs)
    analyzer.run(model, epoch=0)
    for epoch in range(1, args.epochs + 1):
        model.train()
        total = 0.0
        for batch in torch.randperm(len(x_train)).split(64):
            loss = nn.functional.cross_entropy(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        row = analyzer.run(model, epoch=epoch, train_loss=total / len(x_train)).row
        print(f"epoch {epoch}: train loss {row['train_loss']:.3f}, eval accuracy {row['eval_accuracy']:.1%}")
    analyzer.close()
    print(f"analysis in {analyzer.folder}")


if __name__ == "__main__":
    main()
