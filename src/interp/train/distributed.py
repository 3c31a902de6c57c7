"""Several processes under torchrun: PyTorch's own launcher sets RANK/WORLD_SIZE/LOCAL_RANK, and
:func:`setup` joins the process group (gloo on the CPU, NCCL on CUDA).

Only rank 0 writes the run folder, checkpoints, TensorBoard, stages and report; the other ranks train
their shard of every global batch and wait for it at the next collective. A single process started by
torchrun joins a process group of one, so that it goes the same way (DistributedDataParallel, the
collectives) as a larger run: ``torchrun --nproc_per_node 1`` on one GPU tries the NCCL path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["Dist", "setup"]


@dataclass
class Dist:
    """Where this process stands: ``world`` processes, this one is ``rank`` (``local_rank`` on its node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    joined: bool = False  # in a process group (started by torchrun), even one of a single process

    @property
    def enabled(self) -> bool:
        return self.joined

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, index: Tensor) -> Tensor:
        """This rank's part of a global batch (contiguous, sizes differing by at most one)."""
        if not self.enabled:
            return index
        return torch.tensor_split(index, self.world)[self.rank]

    def sum(self, value: Tensor) -> Tensor:
        """The sum over ranks (in place on a copy)."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        total = value.clone()
        dist.all_reduce(total)
        return total

    def gather(self, value: Tensor) -> Tensor:
        """Every rank's ``value`` (any first dimension) concatenated in rank order, on every rank."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        sizes = [torch.zeros(1, dtype=torch.long, device=value.device) for _ in range(self.world)]
        dist.all_gather(sizes, torch.tensor([len(value)], device=value.device))
        longest = int(max(int(s) for s in sizes))
        padded = torch.zeros((longest, *value.shape[1:]), dtype=value.dtype, device=value.device)
        padded[: len(value)] = value
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat([part[: int(size)] for part, size in zip(parts, sizes, strict=True)])

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()


def setup(device: torch.device) -> Dist:
    """Join torchrun's process group when torchrun started this process (or WORLD_SIZE > 1 says another
    launcher did); else a single process on its own."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return Dist()
    import torch.distributed as dist

    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
            dist.init_process_group("nccl")
        else:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
            dist.init_process_group("gloo")
    return Dist(rank=rank, world=world, local_rank=local_rank, joined=True)
