"""One evaluation over several processes: torchrun on one node or across nodes.

torchrun (``python -m torch.distributed.run``) starts the processes and sets
RANK, WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR/PORT) in each. Without them,
or with a world of one, everything runs as a single process and no process
group is created. The run folder must be on a file system every process sees.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from ..errors import InputError

__all__ = ["Distributed", "distributed_session", "from_environment"]

T = TypeVar("T")

# Processes that finish their share early wait at a barrier for the slowest,
# which after an uneven resume can be hours of CPU work; the default timeout
# (minutes) would kill a healthy run. A crashed process does not leave the
# others waiting: torchrun stops the whole group when one process fails.
BARRIER_TIMEOUT = datetime.timedelta(days=7)


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run; the default is a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that shows progress, merges and reports."""
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's share: every world_size-th item from position rank (deterministic, no communication)."""
        return list(items[self.rank :: self.world_size])

    def device(self, requested: str) -> str:
        """The device this process uses: under torchrun, CUDA means the GPU of this process's LOCAL_RANK."""
        if self.world_size > 1 and requested.split(":")[0] == "cuda":
            return f"cuda:{self.local_rank}"
        return requested

    def barrier(self) -> None:
        """Wait for every process (nothing to wait for in a single process)."""
        if self.world_size == 1:
            return
        import torch.distributed as dist  # only several processes need torch here: reading the environment does not

        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[self.local_rank])
        else:
            dist.barrier()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {name}={value!r} is not an integer") from None


def from_environment() -> Distributed:
    """This process's rank, world size and local rank from torchrun's environment variables."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise InputError(
            f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={world_size} LOCAL_RANK={local_rank}"
        )
    return Distributed(rank, world_size, local_rank)


@contextmanager
def distributed_session(device: str = "cpu") -> Iterator[Distributed]:
    """This process's :class:`Distributed`, with the process group set up for the duration when there are several.

    The backend is gloo for CPU work and NCCL for CUDA, with this process's
    GPU selected from LOCAL_RANK before the group is created.
    """
    context = from_environment()
    if context.world_size == 1:
        yield context
        return
    import torch
    import torch.distributed as dist

    cuda = torch.device(device).type == "cuda"
    if cuda:
        if not torch.cuda.is_available():
            raise InputError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
        torch.cuda.set_device(context.local_rank)
    dist.init_process_group(
        "nccl" if cuda else "gloo", rank=context.rank, world_size=context.world_size, timeout=BARRIER_TIMEOUT
    )
    try:
        yield context
    finally:
        dist.destroy_process_group()
