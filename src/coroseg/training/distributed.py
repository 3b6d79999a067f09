"""Data-parallel training under the standard launcher: `torchrun --nproc-per-node N -m coroseg train ...`.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK for every process; without them (a plain `coroseg train`) the
world is one process and nothing here is used. Every rank trains the same model (DDP averages the gradients)
on its own share of each epoch's frames; the losses and the Dice are reduced over the world, so every rank takes
the same best-epoch and early-stopping decisions; rank 0 alone records the run, its checkpoints and journal.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = World()


def world_of_launcher() -> World:
    """The world torchrun (or Slurm's srun running torchrun) describes in the environment."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def join(world: World, device: torch.device) -> torch.device:
    """Join the process group (NCCL between GPUs, gloo between CPU processes); each rank's own device."""
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=30))
    return device


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def summed(values: list[float], device: torch.device) -> list[float]:
    """Each value summed over the world (one collective for all of them)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on one: a stop asked of one rank stops the world together."""
    return summed([float(flag)], device)[0] > 0


def gathered(value: Any) -> list[Any]:
    """Every rank's value, in rank order, on every rank."""
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def main_first(world: World, work: Callable[[], Any]) -> Any:
    """`work()` on rank 0, then on the other ranks: what rank 0 leaves behind (the frame cache) they find.
    If rank 0 fails, torchrun ends the others waiting here."""
    if world.distributed and not world.main:
        dist.barrier()
    value = work()
    if world.distributed and world.main:
        dist.barrier()
    return value


def from_main(value: Any) -> Any:
    """Rank 0's value, on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class DataParallel(torch.nn.Module):
    """The network's logits as a module, so DDP's forward (which arms the gradient all-reduce) is what the
    training step calls."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.logits(images)


def data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(DataParallel(model), device_ids=[device.index] if device.type == "cuda" else None)
