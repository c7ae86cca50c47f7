"""Data-parallel evaluation: `torchrun --nproc_per_node=N -m tcube.eval ...`.

Every rank builds the same plan and walks the same cells in the same order; each cell's test
images are split into contiguous blocks of *whole batches* (rank r takes batches
[r·B/N, (r+1)·B/N)), so every batch — and with it batch-wise quantities such as T^3_B's λ_B or
the bucket engine's bins — is exactly the batch a single process would form. The per-rank
predictions, λ and JS are gathered in rank order, so results.jsonl matches a one-process run row
for row (wall-clock fields aside). Only rank 0 writes results, summary, report, plots and cache
files; decisions that depend on the disk (resume keys, cache hits, calibration) are taken once and
shared, so the ranks never disagree about which collectives come next.

Without WORLD_SIZE > 1 in the environment (a plain `python -m tcube.eval`, tests) `Dist()` is a
single process and every method below is a cheap no-op.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """This process's place in the group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def batch_block(self, n_items: int, batch_size: int) -> slice:
        """This rank's contiguous block of whole batches of `n_items` items (possibly empty)."""
        n_batches = -(-n_items // batch_size)
        first = n_batches * self.rank // self.world
        last = n_batches * (self.rank + 1) // self.world
        return slice(min(first * batch_size, n_items), min(last * batch_size, n_items))

    def gather(self, obj: T) -> list[T]:
        """Every rank's `obj`, in rank order, on every rank (pickled; keep it small and on the CPU)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def from_main(self, fn: Callable[[], T]) -> T:
        """Rank 0 computes `fn()`; every rank gets its value (others never call `fn`)."""
        if not self.active:
            return fn()
        box = [fn() if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def all_true(self, flag: bool) -> bool:
        """True when `flag` holds on every rank (e.g. every rank found a cache file)."""
        return all(self.gather(bool(flag)))

    def main_first(self, fn: Callable[[], T]) -> T:
        """Rank 0 runs `fn` (e.g. training a zoo model into the shared store), then the others do (and find it)."""
        if not self.active:
            return fn()
        if self.is_main:
            out = fn()
        self.barrier()
        if not self.is_main:
            out = fn()
        return out

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()


SINGLE = Dist()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer (set by torchrun)") from None


def init_from_env(device: str | torch.device | None = None, timeout_minutes: float = 60) -> tuple[Dist, bool]:
    """Join torchrun's process group when WORLD_SIZE > 1; returns (Dist, whether this call created the group).

    Backend: nccl when the run's device is CUDA, else gloo. The group rendezvous uses torchrun's
    MASTER_ADDR / MASTER_PORT / RANK / WORLD_SIZE (init_method="env://").
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return SINGLE, False
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    dist = Dist(rank, world, local_rank)
    if torch.distributed.is_initialized():
        return dist, False
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)  # nccl's object collectives use the current device
    torch.distributed.init_process_group("nccl" if cuda else "gloo", init_method="env://", rank=rank,
                                         world_size=world, timeout=timedelta(minutes=timeout_minutes))
    return dist, True


def local_device(device: torch.device, dist: Dist) -> torch.device:
    """Under torchrun each rank drives its own GPU: `cuda` means cuda:LOCAL_RANK."""
    if dist.active and device.type == "cuda" and device.index is None:
        return torch.device("cuda", dist.local_rank)
    return device


def shutdown(created: bool) -> None:
    if created and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
