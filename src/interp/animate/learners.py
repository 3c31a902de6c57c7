"""The toy problem of ``interp animate`` and its learners: the data as tensors, one network and optimizer
per architecture, the minibatches they share frame by frame, and their loss and accuracy."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..config import Config
from ..data import toy
from ..errors import UserError
from ..models import MLP
from ..train import make_optimizer
from .geometry import shape_label

__all__ = ["Batches", "Learner", "Problem", "check_shapes", "make_learners", "make_problem", "measure"]


def check_shapes(dataset: str, shapes: list[list[int]]) -> None:
    """Refuse shapes the animation cannot draw (a :class:`UserError` that names the fix)."""
    if not shapes:
        raise UserError("animate.hidden is empty: give at least one shape, e.g. --hidden 3,2")
    if dataset != "rings":
        return
    for hidden in shapes:
        if not hidden or hidden[-1] != 2:
            fixed = ",".join(str(w) for w in [*hidden, 2])
            raise UserError(f"animate.hidden {hidden}: on rings the last hidden layer must have 2 units (the "
                            f"hidden-space panel is a plane); use e.g. --hidden {fixed}")


@dataclass
class Problem:
    """The toy data as float tensors, and what the panels draw of it."""

    name: str
    train_x: Tensor
    train_y: Tensor  # rings: (N, 1) float 0/1; polynomial: (N, 1) targets
    test_x: Tensor
    test_y: Tensor
    shown: Tensor  # rings: indices of the points drawn, display_points per class

    @property
    def classification(self) -> bool:
        return self.name == "rings"


@dataclass
class Learner:
    """One architecture in training: its hidden widths, shape label, network, optimizer and the metrics
    measured at every frame so far."""

    hidden: list[int]
    label: str
    model: MLP
    optimizer: torch.optim.Optimizer
    history: list[dict[str, float]] = field(default_factory=list)


def make_problem(cfg: Config) -> Problem:
    """The toy problem ``cfg.data`` names, with ``cfg.animate.display_points`` points per ring to draw."""
    data = cfg.data
    if data.dataset == "rings":
        generator = torch.Generator().manual_seed(cfg.seed)
        per_class = cfg.animate.display_points
        points = data.points or 20_000
        x, y = toy.rings(points, data.noise, cfg.seed)
        shown = torch.cat([torch.nonzero(y == label).flatten()[torch.randperm(points, generator=generator)[:per_class]]
                           for label in range(len(toy.RING_RADII))])
        shown = shown[torch.randperm(len(shown), generator=generator)]  # mixed, so neither ring hides the other
        labels = y.float().unsqueeze(1)
        return Problem("rings", x, labels, x, labels, shown)
    train_x, train_y, test_x, test_y = toy.polynomial(data.points or 4_000, seed=cfg.seed)
    return Problem("polynomial", train_x, train_y, test_x, test_y, torch.empty(0, dtype=torch.long))


def make_learners(cfg: Config, problem: Problem) -> list[Learner]:
    """One learner per shape in ``cfg.animate.hidden``, each network initialised from ``cfg.seed``."""
    input_size = problem.train_x.shape[1]
    learners = []
    for hidden in cfg.animate.hidden:
        torch.manual_seed(cfg.seed)  # every architecture starts from the same seed
        model = MLP((input_size,), 1, list(hidden), cfg.model.activation)
        learners.append(Learner(list(hidden), shape_label(input_size, list(hidden)), model,
                                make_optimizer(cfg, model)))
    return learners


class Batches:
    """The minibatch indices of each frame: a fresh epoch (``steps`` None), or the next ``steps`` batches
    of a shuffled order that is reshuffled after every pass over the data."""

    def __init__(self, n: int, batch_size: int, steps: int | None, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.steps, self.generator = n, batch_size, steps, generator
        self.order = torch.randperm(n, generator=generator)
        self.start = 0

    def next_frame(self) -> list[Tensor]:
        if self.steps is None:
            return list(torch.randperm(self.n, generator=self.generator).split(self.batch_size))
        batches = []
        for _ in range(self.steps):
            if self.start >= self.n:
                self.order, self.start = torch.randperm(self.n, generator=self.generator), 0
            batches.append(self.order[self.start:self.start + self.batch_size])
            self.start += self.batch_size
        return batches


@torch.no_grad()
def measure(learner: Learner, problem: Problem) -> dict[str, float]:
    """The learner's loss (and accuracy, or test loss) on the problem now."""
    model = learner.model.eval()
    output = model(problem.train_x)
    if problem.classification:
        loss = nn.functional.binary_cross_entropy_with_logits(output, problem.train_y)
        accuracy = ((output > 0).float() == problem.train_y).float().mean()
        return {"loss": float(loss), "accuracy": float(accuracy)}
    test_loss = nn.functional.mse_loss(model(problem.test_x), problem.test_y)
    return {"loss": float(nn.functional.mse_loss(output, problem.train_y)), "test_loss": float(test_loss)}
