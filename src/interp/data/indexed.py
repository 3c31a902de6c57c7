"""A dataset whose items bring their position along, for the dataset map in a loop of one's own."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset, IterableDataset

from ..errors import UserError

__all__ = ["WithIndex"]


class WithIndex(Dataset):  # type: ignore[type-arg]
    """``dataset[i]`` with ``i`` appended: ``(x, y)`` becomes ``(x, y, i)`` (a dict gains ``"index"``), so that
    every batch a DataLoader makes — shuffled or not — carries its examples' positions, which is what
    :meth:`interp.Analyzer.observe` and the Lightning callback need. A dataset without stable positions (an
    ``IterableDataset``, or one without ``len``) is refused: its numbers could not be followed across epochs."""

    def __init__(self, dataset: Any):
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise UserError(f"WithIndex: {type(dataset).__name__} has no stable positions (an iterable dataset, or "
                            "one without len); the dataset map needs a map-style dataset whose item i is the same "
                            "example every epoch")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        item = self.dataset[i]
        if isinstance(item, dict):
            return {**item, "index": i}
        if isinstance(item, tuple | list):
            return (*item, i)
        return item, i
