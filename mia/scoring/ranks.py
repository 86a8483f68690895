"""Several devices: which rows each rank scores, and how every rank's outputs come together.

Lightning's ``ddp`` strategy runs the same command once per device (rank). Each rank scores whole
batches of the evaluation set dealt round-robin (rank r: batches r, r + W, ...), so every batch holds
the same rows on any number of devices, and no row is repeated (DistributedSampler pads) or dropped.
After the predict loop the ranks exchange their outputs; every rank then holds all of them, and rank
zero alone writes files and W&B.
"""

from __future__ import annotations

import atexit
import math
import subprocess
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from mia.config import is_multirun
from mia.errors import MiaError


def world() -> tuple[int, int]:
    """(world size, rank) of the running process group; (1, 0) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def is_rank_zero() -> bool:
    """Whether this process writes a run's files and W&B run: the only one, or rank zero of several."""
    return world()[1] == 0


class WholeBatches(DistributedSampler):
    """Row indices of whole batches, dealt round-robin to the ranks (in order on one device).

    A DistributedSampler, so that Lightning keeps it instead of inserting its own; the ranks are read
    when the loop starts, once the process group exists.
    """

    def __init__(self, dataset: Any, batch_size: int) -> None:
        super().__init__(dataset, num_replicas=1, rank=0, shuffle=False)
        self.batch_size = batch_size
        self.rows = len(dataset)

    def indices(self, world_size: int, rank: int) -> list[int]:
        batches = range(rank, math.ceil(self.rows / self.batch_size), world_size)
        return [i for b in batches for i in range(b * self.batch_size, min((b + 1) * self.batch_size, self.rows))]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices(*world()))

    def __len__(self) -> int:
        return len(self.indices(*world()))


def check_devices(trainer: L.Trainer, rows: int, batch_size: int) -> None:
    """Several devices only through ``ddp`` (one process per device), each with at least one batch."""
    size = trainer.world_size
    if size == 1:
        return
    from lightning.pytorch.strategies import DDPStrategy
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    strategy = type(trainer.strategy).__name__
    if not isinstance(trainer.strategy, DDPStrategy) or not isinstance(trainer.strategy.launcher,
                                                                       _SubprocessScriptLauncher):
        raise MiaError(f"attacks on {size} devices run with trainer.strategy=ddp (or trainer=ddp), not {strategy} "
                       "with its start method")
    if is_multirun():
        raise MiaError(f"a multirun cannot run its jobs on {size} devices (ddp starts the whole command again on "
                       "every device); sweep on one device per job, e.g. hydra/launcher=slurm")
    batches = math.ceil(rows / batch_size)
    if batches < size:
        raise MiaError(f"{rows} samples in batches of {batch_size} make {batches} batches, fewer than the "
                       f"{size} devices; lower data.batch_size or trainer.devices")


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (on every rank); ``[obj]`` on one device."""
    size, _ = world()
    if size == 1:
        return [obj]
    out: list[Any] = [None] * size
    dist.all_gather_object(out, obj)
    return out


def wait_for_workers(trainer: L.Trainer) -> None:
    """On rank zero: wait at exit for the processes ddp started, so a finished command leaves none behind."""
    procs = getattr(getattr(trainer.strategy, "launcher", None), "procs", None)
    if trainer.is_global_zero and procs:
        def wait() -> None:
            for proc in procs:
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:  # a stuck worker would hold its device
                    proc.kill()
        atexit.register(wait)


def assemble(batches: list[dict[str, torch.Tensor]], rows: int) -> torch.Tensor:
    """Outputs ``[rows, ...]`` in the evaluation set's order, from every rank's batches; each row exactly once."""
    index = torch.cat([b["index"] for b in batches])
    output = torch.cat([b["features"] for b in batches])
    counts = torch.bincount(index, minlength=rows)
    if len(counts) != rows or (counts != 1).any():
        lost, twice = int((counts[:rows] == 0).sum()), int((counts > 1).sum())
        raise MiaError(f"the predict loop scored {rows - lost} of {rows} samples ({twice} more than once); "
                       "attacks run on one device or with trainer.strategy=ddp, over the whole evaluation set")
    values = torch.empty((rows, *output.shape[1:]), dtype=output.dtype)
    values[index] = output
    return values
