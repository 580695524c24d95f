"""Scale-out under ``torchrun``: the rank's place, batch sharding, and agreeing on errors.

``torchrun --nproc-per-node=G python -m resnet_fused ...`` (or across nodes with its rendezvous)
sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; each rank then takes every ``WORLD_SIZE``-th batch of
the work list, starting at its rank, and uses GPU ``LOCAL_RANK``. The ranks only exchange small
Python objects (settings checks, counts, timings), so the process group is gloo's on CPUs and
GPUs alike; the images never leave their rank. A process that was not started by torchrun is a
world of one. If the caller already initialised a process group, that one is used.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch.distributed as dist

T = TypeVar("T")
# Ranks wait for each other at the end (the slowest shard) and while rank 0 prepares the output:
# torchrun's agent ends the whole group if one rank dies, so a long timeout only covers honest
# stragglers.
_TIMEOUT = timedelta(hours=24)


class RankError(RuntimeError):
    """Another rank failed a step every rank must pass (its message names the rank)."""


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, obj: object) -> list:
        """``obj`` from every rank, in rank order (every rank gets the list)."""
        if self.size == 1:
            return [obj]
        out: list = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def agree(self, step: Callable[[], T], on: str = "all") -> T | None:
        """Runs ``step`` on every rank (``on="all"``: each rank gets its own result) or on rank 0
        only (``on="main"``: every rank gets rank 0's result, which must pickle). If it raised
        anywhere, every rank raises (the failing rank its own exception), so no rank goes on
        alone and none waits forever for one that stopped."""
        value, failure = None, None
        error: BaseException | None = None
        if on == "all" or self.is_main:
            try:
                value = step()
            except Exception as e:
                error, failure = e, f"{type(e).__name__}: {e}"
        shared = value if on == "main" and self.size > 1 else None
        gathered = self.gather((failure, shared))
        if error is not None:
            raise error
        for rank, (message, _) in enumerate(gathered):
            if message is not None:
                raise RankError(f"rank {rank} failed: {message}")
        return gathered[0][1] if on == "main" and self.size > 1 else value

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_world() -> World:
    """The world this process is in: torchrun's (initialising gloo), the caller's, or one."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(),
                     int(os.environ.get("LOCAL_RANK", "0")), owns_group=False)
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch has no torch.distributed")
    dist.init_process_group("gloo", timeout=_TIMEOUT)
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                 owns_group=True)


def make_batches(indices: Sequence[int], batch_size: int) -> list[list[int]]:
    return [list(indices[i:i + batch_size]) for i in range(0, len(indices), batch_size)]


def shard(batches: Sequence[T], world: World) -> list[T]:
    """This rank's batches: whole batches round-robin, so each image is computed in the same
    batch as in a one-process run (same batch, same arithmetic: the merged output is that run's
    output, bit for bit, on identical devices)."""
    return list(batches[world.rank::world.size])
