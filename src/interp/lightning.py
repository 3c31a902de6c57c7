"""The analysis stages in your own Lightning loop (``pip install "interp[lightning]"``).

```python
from interp.lightning import InterpCallback
callback = InterpCallback("save/lit", classes=["a", "b", "c", "d"], stages=["confusion", "saliency", "gradcam"])
lightning.Trainer(max_epochs=2, callbacks=[callback]).fit(module, train_loader, val_loader)
```

The stages run before training (epoch 0) and at the end of every validation epoch after it, on rank 0
only, on the evaluation data taken from the trainer's (first) validation dataloader (all of its dataset,
also under a DDP strategy, which gives each rank only a share). The LightningModule's
forward must return logits (or a tuple with the logits first, or a dict with ``logits``). The run
folder is what ``interp train`` writes for those stages; see :class:`interp.Analyzer`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from torch.utils.data import DataLoader

from .analysis.api import Analyzer
from .errors import UserError

__all__ = ["InterpCallback"]

_INPUT_KEYS = ("x", "image", "images", "input", "inputs")
_LABEL_KEYS = ("y", "label", "labels", "target", "targets")


def _pair(batch: Any) -> tuple[Tensor, Tensor]:
    """(inputs, labels) from a batch: a tuple/list (inputs first, labels second) or a dict."""
    if isinstance(batch, tuple | list) and len(batch) >= 2:
        return batch[0], batch[1]
    if isinstance(batch, dict):
        x = next((batch[k] for k in _INPUT_KEYS if k in batch), None)
        y = next((batch[k] for k in _LABEL_KEYS if k in batch), None)
        if x is not None and y is not None:
            return x, y
    raise UserError("InterpCallback: a validation batch must be (inputs, labels, …) or a dict with one of "
                    f"{', '.join(_INPUT_KEYS)} and one of {', '.join(_LABEL_KEYS)}")


class InterpCallback(Callback):
    """Runs interp's analysis stages on the validation data during ``Trainer.fit``.

    ``classes``: the class names, in label order. ``mean``/``std``: the normalization the inputs went
    through (optional, for drawing; without them each image is scaled for display). ``stages``: names or
    ``{name: {options}}`` (default: the default stages). ``eval_limit``: use only the first N validation
    items. Other keywords go to :class:`interp.Analyzer` (``probe_per_class``, ``seed``, ``batch_size``,
    ``features_layer``, ``methods``).
    """

    def __init__(self, folder: str | Path, classes: Sequence[str], *, stages: list[Any] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 eval_limit: int | None = None, notice: Callable[[str], None] = print, **analyzer_options: Any):
        from .attribution import check_methods
        from .stages import check_stages

        check_stages(stages, "stages")  # a typo fails when the callback is made, not after an epoch
        check_methods(analyzer_options.get("methods"), "methods")
        self.folder = Path(folder)
        self.classes = list(classes)
        self.stages = stages
        self.mean, self.std = mean, std
        self.eval_limit = eval_limit
        self.notice = notice
        self.analyzer_options = analyzer_options
        self.analyzer: Analyzer | None = None

    # -- the evaluation data ---------------------------------------------------------------------------
    def _eval_data(self, trainer: Trainer, device: torch.device) -> tuple[Tensor, Tensor] | None:
        loaders = trainer.val_dataloaders
        if loaders is None and trainer.world_size > 1:
            return None  # setting it up here is a collective that only rank 0 would enter: wait for validation
        if loaders is None:
            try:  # no sanity check ran: set the validation data up now
                trainer.fit_loop.epoch_loop.val_loop.setup_data()
            except Exception:  # noqa: BLE001 - older or newer Lightning: wait for the first validation
                return None
            loaders = trainer.val_dataloaders
        if loaders is None:
            return None
        loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
        if isinstance(loader, dict):
            loader = next(iter(loader.values()))
        if trainer.world_size > 1 and isinstance(loader, DataLoader):  # a DDP strategy shards the loader:
            loader = DataLoader(loader.dataset, batch_size=loader.batch_size or 256,  # rank 0 reads all of it
                                collate_fn=loader.collate_fn, shuffle=False)
        xs, ys, count = [], [], 0
        with torch.inference_mode(False), torch.no_grad():
            for batch in loader:
                x, y = _pair(batch)
                xs.append(x.detach().cpu().clone())
                ys.append(y.detach().cpu().clone())
                count += len(x)
                if self.eval_limit is not None and count >= self.eval_limit:
                    break
        if not xs:
            raise UserError("InterpCallback: the validation dataloader is empty")
        x_eval, y_eval = torch.cat(xs)[: self.eval_limit], torch.cat(ys)[: self.eval_limit]
        return x_eval.to(device), y_eval.to(device)

    def _ensure(self, trainer: Trainer, pl_module: LightningModule) -> Analyzer | None:
        if self.analyzer is None:
            data = self._eval_data(trainer, pl_module.device)
            if data is None:
                return None
            self.analyzer = Analyzer(self.folder, eval_data=data, classes=self.classes, mean=self.mean,
                                     std=self.std, stages=self.stages,
                                     epochs=trainer.max_epochs if (trainer.max_epochs or -1) > 0 else None,
                                     notice=self.notice, **self.analyzer_options)
        return self.analyzer

    def _run(self, trainer: Trainer, pl_module: LightningModule, epoch: int) -> None:
        analyzer = self._ensure(trainer, pl_module)
        if analyzer is None:
            return
        loss = trainer.callback_metrics.get("train_loss")
        with torch.inference_mode(False), torch.enable_grad():
            analyzer.run(pl_module, epoch=epoch, train_loss=float(loss) if isinstance(loss, Tensor) else None)

    # -- Lightning hooks -------------------------------------------------------------------------------
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            self._run(trainer, pl_module, 0)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        self._run(trainer, pl_module, trainer.current_epoch + 1)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.analyzer is not None:
            self.analyzer.close()

    @property
    def run_folder(self) -> Path | None:
        """Where the analysis went (``folder``, or ``folder-2`` … when it already existed)."""
        return self.analyzer.folder if self.analyzer is not None else None
