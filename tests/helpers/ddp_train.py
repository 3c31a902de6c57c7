"""Run under torchrun by tests/test_distributed.py: ``interp train`` exactly as the CLI runs it, and each
rank's final parameters saved to OUT/rank<R>.pt so the test can compare them across ranks, and the process
group's backend to OUT/backend<R>.txt ("none" when the process joined no group)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from interp.train import loop

out = Path(os.environ["INTERP_TEST_OUT"])
original = loop.Trainer.fit


def fit_and_keep(self, start_epoch: int = 0, resuming: bool = False) -> None:  # type: ignore[no-untyped-def]
    original(self, start_epoch, resuming)
    from torch import distributed

    backend = distributed.get_backend() if distributed.is_initialized() else "none"
    (out / f"backend{os.environ.get('RANK', '0')}.txt").write_text(str(backend))
    state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
    torch.save(state, out / f"rank{os.environ.get('RANK', '0')}.pt")


loop.Trainer.fit = fit_and_keep  # type: ignore[method-assign]

from interp.cli import main  # noqa: E402

sys.argv = ["interp", *sys.argv[1:]]
main()
