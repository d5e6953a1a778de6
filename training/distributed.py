"""Pipeline stage 4, training, over several processes: data parallelism as torchrun starts
it. The process group, each rank's share of the batch, and the few collective operations
the loop needs.

torchrun (or any launcher that sets WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT) starts one process per device. All ranks lay the corpus out in the columns a
single process with the same batch_size would use (training.batches), and rank r trains on
its own contiguous block of them, so together the ranks train on exactly that batch:

    batch_size B = 8, world size W = 2          each rank: (B/W, T) windows, its own
    columns 0 1 2 3 │ 4 5 6 7                   (L, B/W, H) hidden state, carried on
            rank 0  │ rank 1

Each rank's loss is the mean over its own (B/W)·T targets, so the mean of the ranks'
gradients is the 1-process gradient of the mean over B·T. That mean is taken by one
all-reduce of all gradients after backward (the loss rides along in the same buffer), so
every rank holds the same gradients, clips them by the same global norm, takes the same
optimizer step and keeps identical weights: no weights are ever broadcast.

Every collective waits at most `timeout_seconds` for the other ranks. A rank that died
or hangs makes the others fail with a one-line DistributedError instead of hanging (on
CUDA, NCCL's watchdog enforces the same timeout and ends the process).

A single process (no torchrun, or one process) is a world of one: no process group, and
every operation here hands its input back.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from model.network import Hidden

DEFAULT_TIMEOUT_SECONDS = 300.0  # longer than any one-sided pause (rank 0 saving, sampling)


class DistributedError(RuntimeError):
    """The process group failed: a rank died, hangs or cannot be reached."""


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run, and the collectives between the places."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the process's index on its machine: its GPU
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ValueError(
                f"inconsistent process placement: rank {self.rank}, world size "
                f"{self.world_size}, local rank {self.local_rank}"
            )
        if not self.timeout_seconds > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {self.timeout_seconds}")

    @classmethod
    def from_environment(
        cls, env: Mapping[str, str], timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    ) -> Distributed:
        """The placement torchrun gives in WORLD_SIZE, RANK and LOCAL_RANK; a world of one
        when they are not set. Raises ValueError for values that are not integers."""
        try:
            world_size = int(env.get("WORLD_SIZE", "1"))
            rank = int(env.get("RANK", "0"))
            local_rank = int(env.get("LOCAL_RANK", str(rank)))
        except ValueError as error:
            raise ValueError(f"bad torchrun environment variable: {error}") from None
        return cls(rank, world_size, local_rank, timeout_seconds)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that reports, samples and writes the run directory."""
        return self.rank == 0

    def training_device(self, device: torch.device) -> torch.device:
        """The device this rank trains on: `device`, or on CUDA the GPU LOCAL_RANK."""
        if not self.enabled or device.type == "cpu":
            return device
        if device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        raise ValueError(
            f"distributed training runs on CPU (gloo) or CUDA (NCCL), not {device.type}"
        )

    def batch_columns(self, batch_size: int) -> slice:
        """This rank's columns of a batch: [r·B/W, (r+1)·B/W). Raises ValueError unless the
        world size divides batch_size (equal shares keep the averaged gradient exact)."""
        if batch_size % self.world_size:
            raise ValueError(
                f"batch_size {batch_size} must be divisible by the number of processes "
                f"({self.world_size}): each trains on batch_size / {self.world_size} columns"
            )
        share = batch_size // self.world_size
        return slice(self.rank * share, (self.rank + 1) * share)

    def share(self, count: int) -> slice:
        """This rank's contiguous part of `count` items split as evenly as possible (the
        validation columns); a rank may get none."""
        return slice(
            count * self.rank // self.world_size, count * (self.rank + 1) // self.world_size
        )

    def average_gradients(self, parameters: Iterable[Tensor], loss: Tensor) -> Tensor:
        """Replace every gradient with its mean over the ranks, in one all-reduce of a flat
        buffer that also carries `loss`; returns the mean loss (a 0-d tensor)."""
        if not self.enabled:
            return loss.detach()
        # The same parameters have gradients on every rank: all run the same graph.
        params = [p for p in parameters if p.grad is not None]
        flat = torch.cat([p.grad.reshape(-1) for p in params] + [loss.detach().reshape(1)])
        self._all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        return flat[-1]

    def max_int(self, value: int, device: torch.device) -> int:
        """The largest of the ranks' values (agreeing on whether to stop)."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=device)
        self._all_reduce(tensor, dist.ReduceOp.MAX)
        return int(tensor.item())

    def sum_floats(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Element-wise sums over the ranks, in float64 (validation nats and counts)."""
        if not self.enabled:
            return list(values)
        tensor = torch.tensor(values, dtype=torch.float64, device=device)
        self._all_reduce(tensor)
        return tensor.tolist()

    def broadcast_int(self, value: int | None, device: torch.device) -> int | None:
        """Rank 0's value on every rank (a horizon measured on rank 0's clock)."""
        if not self.enabled:
            return value
        tensor = torch.tensor([-1 if value is None else value], dtype=torch.int64, device=device)
        with self._guard():
            dist.broadcast(tensor, src=0)
        result = int(tensor.item())
        return None if result == -1 else result

    def gather_hidden(self, hidden: Hidden) -> Hidden:
        """The full state, each (L, B, H), from every rank's (L, B/W, H) columns."""
        if not self.enabled:
            return hidden
        full = []
        for part in hidden:
            parts = [torch.empty_like(part) for _ in range(self.world_size)]
            with self._guard():
                dist.all_gather(parts, part.contiguous())
            full.append(torch.cat(parts, dim=1))
        return tuple(full)

    def gather_objects(self, value: Any) -> list[Any]:
        """Every rank's `value`, by rank (small picklable things: RNG states)."""
        if not self.enabled:
            return [value]
        values: list[Any] = [None] * self.world_size
        with self._guard():
            dist.all_gather_object(values, value)
        return values

    def _all_reduce(self, tensor: Tensor, op: Any = None) -> None:
        with self._guard():
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op is None else op)

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except RuntimeError as error:  # DistBackendError and gloo's timeouts among them
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: the other ranks stopped answering "
                f"(a rank died, hangs or is unreachable; timeout {self.timeout_seconds:g} s): "
                f"{_first_line(error)}"
            ) from None


@contextmanager
def process_group(
    device: torch.device,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    env: Mapping[str, str] | None = None,
) -> Iterator[Distributed]:
    """Join the process group torchrun's environment describes (gloo on the CPU, NCCL on
    CUDA, with the GPU LOCAL_RANK made current) for the duration of the block, and leave
    it after. Without torchrun, a world of one and no group. Raises DistributedError when
    the others cannot be reached within the timeout."""
    env = os.environ if env is None else env
    place = Distributed.from_environment(env, timeout_seconds)
    if not place.enabled:
        yield place
        return
    device = place.training_device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            timeout=timedelta(seconds=timeout_seconds),
            rank=place.rank,
            world_size=place.world_size,
            device_id=device if device.type == "cuda" else None,  # NCCL: bind the GPU now
        )
    except (RuntimeError, ValueError, OSError) as error:  # DistStoreError, TimeoutError
        address = f"{env.get('MASTER_ADDR', '?')}:{env.get('MASTER_PORT', '?')}"
        raise DistributedError(
            f"rank {place.rank} of {place.world_size}: could not join the process group at "
            f"{address} within {timeout_seconds:g} s: {_first_line(error)}"
        ) from None
    try:
        yield place
    finally:
        dist.destroy_process_group()


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."
