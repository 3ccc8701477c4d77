"""Work split across processes: ``torchrun`` / ``accelerate launch`` ranks, and job-array shards (``--shard K/N``).

Under a launcher (``WORLD_SIZE`` > 1 in the environment) every process runs the same command; :func:`current`
joins them (:func:`current_share`) and keeps a gloo group of its own for barriers and small objects, beside the
default group that `finetune`'s Accelerator uses. Work is dealt round-robin over a list that every rank computes
identically, so which process makes what is deterministic, and results do not depend on the number of
processes. A job-array shard needs no process group: shard K of N takes items K-1, K-1+N, ... of the full list.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from dermsynth.errors import DermsynthError
from dermsynth.utils import pick_device

T = TypeVar("T")

# A barrier waits for the slowest rank's share (hours in a large sweep), not for a network round trip; the default
# group (finetune's gradients) keeps torch's timeout, so a hung collective there still fails.
BARRIER_TIMEOUT = timedelta(days=7)
_GROUP: Any = None
MPI_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


@dataclass(frozen=True)
class ProcessShare:
    """This process's place among those running one command."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def mine(self, items: Sequence[T]) -> list[T]:
        """This rank's deal of ``items``: every world_size-th, starting at its rank."""
        return list(items[self.rank::self.world_size])

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier(group=_GROUP)

    def broadcast(self, value: T) -> T:
        """The main process's ``value``, on every rank: what it read from the shared folder is what all act on
        (another rank's view may lag behind, e.g. on a network file system)."""
        if not self.distributed:
            return value
        import torch.distributed as dist

        values: list[Any] = [value if self.is_main else None]
        dist.broadcast_object_list(values, src=0, group=_GROUP)
        return values[0]

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order, on every rank (small picklable objects only)."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value, group=_GROUP)
        return values

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """The main process runs the block first (it may write caches the others then read), then the rest."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def device(self, preferred: str = "auto") -> str:
        """``preferred``, except that "auto" gives each process of a multi-GPU launch its own GPU."""
        device = pick_device(preferred)
        if preferred == "auto" and device == "cuda" and self.distributed:
            import torch

            return f"cuda:{self.local_rank % torch.cuda.device_count()}"
        return device

    def cpu_threads(self, threads: int | None) -> int | None:
        """``threads``, or (several processes on one machine) the cores this process may use, split between them.
        (A launcher sets OMP_NUM_THREADS=1 in every process; dermsynth sets torch's thread count itself.)"""
        if threads is not None or self.local_world_size == 1:
            return threads
        return max(1, usable_cores() // self.local_world_size)


def usable_cores() -> int:
    """The cores this process may run on (CPU affinity: SLURM --cpus-per-task, containers), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def current_share() -> ProcessShare:
    """The share of this process (a single process unless a launcher set ``WORLD_SIZE`` > 1); joins the process
    group on first use."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        _refuse_mpi_without_world_size()
        return ProcessShare()
    share = ProcessShare(_env_int("RANK", 0), world, _env_int("LOCAL_RANK", 0), _env_int("LOCAL_WORLD_SIZE", world))
    _join_group(share.local_rank)
    return share


def _join_group(local_rank: int) -> None:
    """Join the launch's process group once, as accelerate would (NCCL for GPU tensors beside gloo for CPU
    objects; `finetune` in the same process reuses it), and make our own gloo group for the barriers."""
    global _GROUP
    if _GROUP is not None:
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank % torch.cuda.device_count())
            dist.init_process_group("cuda:nccl,cpu:gloo")
        else:
            dist.init_process_group("gloo")
    _GROUP = dist.new_group(backend="gloo", timeout=BARRIER_TIMEOUT)
    atexit.register(_leave_group)


def _leave_group() -> None:
    """Tear the process groups down before the interpreter does: left to exit, gloo's threads can abort a
    finished rank ("terminate called without an active exception") and fail the whole launch."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    if _GROUP is not None:
        # Leave together: a rank that tears its connections down while another still holds them can abort the
        # other's gloo thread in the same way.
        with contextlib.suppress(RuntimeError):
            dist.barrier(group=_GROUP)
    dist.destroy_process_group()


def _refuse_mpi_without_world_size() -> None:
    """mpirun starts several processes without torch's variables: each would think it is alone and all would
    write one output folder."""
    for name in MPI_SIZE_VARIABLES:
        if _env_int(name, 1) > 1:
            raise DermsynthError(f"{name}={os.environ[name]}: several MPI processes, but no WORLD_SIZE; launch "
                                 "with torchrun or accelerate launch (docs/scale.md)")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise DermsynthError(f"environment variable {name}={value!r} is not an integer") from None


@dataclass(frozen=True)
class JobShard:
    """Shard ``index`` (1-based) of ``count``: a job-array task's part of a list that every task computes alike."""

    index: int
    count: int

    def take(self, items: Sequence[T]) -> list[T]:
        return list(items[self.index - 1::self.count])

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str | None) -> JobShard | None:
    """``"K/N"`` (1 <= K <= N) as a :class:`JobShard`; None stays None."""
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise DermsynthError(f"shard {text!r} is not K/N with 1 <= K <= N (e.g. 3/8 for task 3 of an 8-task array)")
    return JobShard(int(match[1]), int(match[2]))
