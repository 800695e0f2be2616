"""The one distributed set-up of the full-scale code: training, latent preparation, sampling and evaluation.

``torchrun`` sets RANK, WORLD_SIZE and LOCAL_RANK; a plain ``python -m`` is one process (rank 0 of 1). With more than
one process, :func:`setup` starts the default process group once (NCCL on GPUs, gloo on the CPU, unless a backend is
given) and pins rank r to ``cuda:{LOCAL_RANK}``. Work is split into contiguous shares with :func:`chunk` and put back
together in rank order with :func:`gather_rows`.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    """This process's place: ``rank`` of ``world_size``, its ``device``; ``main`` is rank 0."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def setup(*, backend: str | None = None, timeout: timedelta | None = None) -> Dist:
    """This process's :class:`Dist` from torchrun's environment, starting the process group if there are several.

    ``backend``: None for NCCL on GPUs and gloo on the CPU; "gloo" for a group used only for barriers on any device.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK, WORLD_SIZE: expected 0 <= RANK < WORLD_SIZE from torchrun, got {rank}, {world}")
    device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"),
                                **({"timeout": timeout} if timeout is not None else {}))
    return Dist(rank=rank, world_size=world, device=device)


def agree(d: Dist, *flags: bool | torch.Tensor) -> list[bool]:
    """Each flag OR-ed over all ranks (one all-reduce) and read on the host once. A flag is a bool or a 0-d tensor
    on ``d.device`` (read without a host copy of its own, so the flags of a step cost one synchronisation; a Python
    bool becomes a fill on the device, not a blocking host-to-device copy)."""
    return agree_later(d, *flags)[1]()


def agree_later(d: Dist, *flags: bool | torch.Tensor) -> tuple[torch.Tensor, Callable[[], list[bool]]]:
    """:func:`agree` in two halves: at once, the OR-ed flags as a float tensor on ``d.device`` (1 where set), for
    work the host launches before it knows them; and a function that reads them on the host. On CUDA the read waits
    for the flags alone (a copy into pinned memory, then an event), not for the work launched after them, so the
    device stays busy while the host reads."""
    t = torch.stack([f.to(torch.float32) if torch.is_tensor(f) else torch.full((), float(f), device=d.device)
                     for f in flags])
    if d.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if t.device.type != "cuda":
        return t, lambda: [v > 0 for v in t.tolist()]
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    copied = torch.cuda.Event()
    copied.record()

    def read() -> list[bool]:
        copied.synchronize()
        return [v > 0 for v in host.tolist()]
    return t, read


def teardown(d: Dist) -> None:
    """End the process group that :func:`setup` started (a no-op for one process).

    Before torch 2.8 (pytorch/pytorch#154976) the Python ``ProcessGroup`` object was freed with the GIL held, and
    freeing it joins gloo's worker threads. A worker thread that has just finished a collective may still hold the
    last reference to that collective's tensors after Python has dropped them; freeing those tensors needs the GIL,
    so the join never returned (a hang in ``destroy_process_group``, about 1 run in 5 of a two-process gloo test on
    torch 2.4). The backends (``ProcessGroupGloo``, ``ProcessGroupNCCL``) are Python objects that release the GIL
    before they are freed, so a reference to each is held across ``destroy_process_group`` and dropped last: the
    threads are joined there, without the GIL.
    """
    if d.distributed and dist.is_initialized():
        pg = dist.group.WORLD
        backends = [pg._get_backend(device) for device in pg._device_types]
        del pg
        dist.destroy_process_group()
        del backends


def chunk(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank r's contiguous share [⌊rn/R⌋, ⌊(r+1)n/R⌋) of n items."""
    return rank * n // world, (rank + 1) * n // world


def gather_rows(x: torch.Tensor, n: int, world: int) -> torch.Tensor:
    """Concatenate every rank's :func:`chunk` of rows (in rank order) on every rank; shares differ by at most one."""
    if world == 1:
        return x
    shares = [chunk(n, r, world) for r in range(world)]
    padded = torch.zeros(max(b - a for a, b in shares), *x.shape[1:], dtype=x.dtype, device=x.device)
    padded[: len(x)] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: b - a] for p, (a, b) in zip(parts, shares)])
