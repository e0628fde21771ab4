"""One tracked run across the processes of a ``torch.distributed`` job (DDP, FSDP, torchrun, Lightning,
Accelerate): which rank writes, the run every rank agrees on, scalars reduced over the ranks, and the
module a snapshot reads.

Every process calls ``layerlake.track`` (or ``layerlake.init``) alike. The writer rank (rank 0 unless
``track(writer_rank=...)`` says otherwise) starts the run and the others receive it through the process
group, so the run id, its start time and its probe are the writer's on every rank. Snapshots are
committed by the writer alone; scalars a rank logs with ``reduce="rank"`` (the default) are committed by
that rank, each into its own tasks, so the warehouse must be on a file system every rank sees (on one
node it is). Nothing here communicates unless the user's call needs it: ``reduce="mean"`` (and sum, min,
max) and the sharded snapshot of an FSDP model are collectives, which every rank must call at the same
step, as it calls its optimizer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from layerlake.core.choices import Choice
from layerlake.core.errors import ConfigError, LayerlakeError

T = TypeVar("T")


class Reduce(Choice):
    """How ``run.log`` records a number that every process of a distributed job logs."""

    rank = "rank", "each process's own value, stored with its rank (no communication)"
    writer = (
        "writer",
        "the writer rank's value, stored once as the run's (rank NULL); the other ranks' calls store nothing: "
        "for numbers the training library has reduced already (Lightning's sync_dist, the Trainer's loss)",
    )
    mean = "mean", "the mean over the ranks, stored once (rank NULL); every rank must log it at that step"
    sum = "sum", "the sum over the ranks, stored once (rank NULL); every rank must log it at that step"
    min = "min", "the least over the ranks, stored once (rank NULL); every rank must log it at that step"
    max = "max", "the greatest over the ranks, stored once (rank NULL); every rank must log it at that step"


@dataclass(frozen=True)
class Group:
    """This process's place in the job: its rank, how many ranks there are, which one writes."""

    rank: int
    world: int
    writer: int = 0

    @property
    def writes(self) -> bool:
        return self.rank == self.writer


def current(writer: int = 0) -> Group | None:
    """The job this process belongs to (the default process group), or None: not distributed, or a
    group of one process (whose run is an ordinary one)."""
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    world = dist.get_world_size()
    if not 0 <= writer < world:
        raise ConfigError(
            f"writer_rank={writer} is not a rank of this job (ranks 0..{world - 1})",
            fix="leave writer_rank at 0, or pass a rank below the world size",
        )
    return Group(dist.get_rank(), world, writer)


def agree(group: Group, start: Callable[[], T]) -> T:
    """``start()`` run on the writer, and its result on every rank (sent through the process group). An
    error the writer meets is raised on every rank, so no rank waits for a run that never started."""
    import torch.distributed as dist

    box: list[Any] = [None]
    if group.writes:
        try:
            box[0] = ("ok", start())
        except Exception as error:
            # sent on first, so the other ranks fail too instead of waiting; then raised here as it came
            fix = error.fix if isinstance(error, LayerlakeError) else None
            message = error.message if isinstance(error, LayerlakeError) else f"the writer rank: {error!r}"
            kind = type(error) if isinstance(error, LayerlakeError) else RuntimeError
            dist.broadcast_object_list([("error", kind, message, fix)], src=group.writer)
            raise
    dist.broadcast_object_list(box, src=group.writer)
    if box[0][0] == "error":
        _, kind, message, fix = box[0]
        raise kind(message, fix=fix) if issubclass(kind, LayerlakeError) else kind(message)
    return box[0][1]


def reduce(group: Group, step: int, numbers: dict[str, float], how: Reduce) -> dict[str, float]:
    """``numbers`` combined over the ranks (a collective: every rank calls it with the same step and
    names). Ranks that disagree get the same error, naming what each logged."""
    import torch.distributed as dist

    mine = (int(step), tuple(sorted(numbers)), [numbers[k] for k in sorted(numbers)])
    every: list[Any] = [None] * group.world
    dist.all_gather_object(every, mine)
    if len({(s, names) for s, names, _ in every}) > 1:
        said = "; ".join(f"rank {r}: step {s} {list(names)}" for r, (s, names, _) in enumerate(every))
        raise ConfigError(
            f"log(..., reduce={how.value!r}) needs every rank to log the same names at the same step ({said})",
            fix="log the same numbers on every rank at that step, or use reduce='rank' (each rank's own)",
        )
    values = np.array([v for *_, v in every], dtype=np.float64)  # (world, names)
    combined = {
        Reduce.mean: values.mean(axis=0), Reduce.sum: values.sum(axis=0),
        Reduce.min: values.min(axis=0), Reduce.max: values.max(axis=0),
    }[how]  # fmt: skip
    return dict(zip(mine[1], (float(v) for v in combined), strict=True))


def barrier(group: Group) -> None:
    import torch.distributed as dist

    dist.barrier()


def unwrap(model: Any) -> Any:
    """The module a snapshot reads: DistributedDataParallel's ``.module`` and ``torch.compile``'s
    original (a forward through DDP itself would arm its gradient all-reduce on one rank alone)."""
    from torch.nn.parallel import DistributedDataParallel

    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def model_class_name(model: Any) -> str:
    """The class name of the model a user trains, under its wrappers: ``GPTNeoXForCausalLM`` for a DDP
    module or an FSDP2 model (whose class ``fully_shard`` swapped for ``FSDPGPTNeoXForCausalLM``)."""
    model = unwrap(model)
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return type(model).__name__
    return next(c.__name__ for c in type(model).__mro__ if not issubclass(c, FSDPModule))


def is_sharded(model: Any) -> bool:
    """Whether any parameter of ``model`` is a DTensor (FSDP2's ``fully_shard``, tensor parallelism):
    then a snapshot gathers the matrices and runs on every rank together (``etl.sharded``)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        return False
    return any(isinstance(p, DTensor) for p in model.parameters())


__all__ = [
    "Group",
    "Reduce",
    "agree",
    "barrier",
    "current",
    "is_sharded",
    "model_class_name",
    "reduce",
    "unwrap",
]
