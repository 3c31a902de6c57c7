"""interp's stages in a Lightning loop: a small conv net on CIFAR-10-shaped tensors, analysed after every
validation epoch by ``InterpCallback``, with the dataset map: the training batches bring their positions
(``WithIndex``) and ``training_step`` returns its logits.

    python examples/lightning_callback.py --images 512 --epochs 2 --save-dir save

(The tensors here are random with a learnable signal, so the example runs anywhere; put your own
``LightningModule`` and dataloaders in their place.)
"""

from __future__ import annotations

import argparse

import lightning
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from interp.data import WithIndex
from interp.lightning import InterpCallback

CLASSES = ["airplane", "automobile", "bird", "cat"]
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def tensors(count: int, seed: int) -> TensorDataset:
    """CIFAR-10-shaped images (3 × 32 × 32, normalized); each class brightens one quadrant."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(count) % len(CLASSES)
    x = torch.rand(count, 3, 32, 32, generator=g) * 0.5
    for c in range(len(CLASSES)):
        r, q = divmod(c, 2)
        x[y == c, :, 16 * r:16 * r + 16, 16 * q:16 * q + 16] += 0.5
    return TensorDataset((x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1), y)


class Net(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                                 nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, len(CLASSES)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, _index):  # type: ignore[no-untyped-def]
        x, y, _positions = batch  # WithIndex adds each example's position, for the dataset map
        logits = self(x)
        loss = nn.functional.cross_entropy(logits, y)
        self.log("train_loss", loss)
        return {"loss": loss, "logits": logits}  # the logits: every training example's dynamics, no extra pass

    def validation_step(self, batch, _index):  # type: ignore[no-untyped-def]
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--save-dir", default="save")
    parser.add_argument("--devices", type=int, default=1, help="CPU processes (Lightning's DDP strategy when > 1)")
    args = parser.parse_args()

    torch.manual_seed(0)
    train_loader = DataLoader(WithIndex(tensors(args.images, 0)), batch_size=64, shuffle=True)
    val_loader = DataLoader(tensors(max(args.images // 4, 8), 1), batch_size=256)
    callback = InterpCallback(f"{args.save_dir}/lit", classes=CLASSES, mean=MEAN, std=STD,
                              stages=["confusion", "saliency", "gradcam", "dataset_map"])
    trainer = lightning.Trainer(max_epochs=args.epochs, callbacks=[callback], accelerator="cpu", logger=False,
                                devices=args.devices, strategy="ddp" if args.devices > 1 else "auto",
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(Net(), train_loader, val_loader)
    if trainer.is_global_zero:
        print(f"analysis in {callback.run_folder}")


if __name__ == "__main__":
    main()
