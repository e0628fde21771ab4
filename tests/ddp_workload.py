"""One rank of a distributed training job for the DDP and FSDP tracking tests, started as torchrun starts
its workers (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment; gloo, CPU): a tiny GPT-NeoX
model wrapped in DistributedDataParallel or sharded with FSDP2's fully_shard, each rank on its own
batches, tracked through ``layerlake.track``.

    python tests/ddp_workload.py WAREHOUSE RUN_ID|new [--mode ddp|fsdp] [--steps N] [--cadence K]
        [--weights DIR] [--die-rank R --die-step S]

Each rank logs its loss (``reduce="rank"``) and the loss averaged over the ranks (``loss_mean``,
``reduce="mean"``). Prints ``taking <step>`` just before a snapshot, ``snapshot <step>`` after it, and
``done`` at the end. ``--weights``: the whole model's state dict saved after each snapshot (rank 0).
``--die-rank R --die-step S``: rank R kills itself (SIGKILL) inside the snapshot of step S.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

import layerlake

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models  # noqa: E402

PROBE = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 18], [19, 20, 21, 22, 23, 24]]


def wrapped(mode: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(what the loop trains, the model inside it): the same weights on every rank."""
    model = tiny_models.neox(seed=0).train()
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model), model
    from torch.distributed.fsdp import fully_shard

    for layer in model.gpt_neox.layers:
        fully_shard(layer)
    fully_shard(model)
    return model, model


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict (every rank gathers; DDP's is whole already)."""
    from layerlake.etl.sharded import full

    return {k: full(v).detach().clone() for k, v in model.state_dict().items()}


def die_inside_snapshots(step: int) -> None:
    """SIGKILL this process the next time a snapshot reaches its spectra: the writer with part of its
    rows computed (its SVDs), any rank of a sharded model between two gathers."""
    from layerlake.etl import metrics, sharded

    def dying(*args, **kwargs):
        print(f"dying in {step}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    metrics.batched_svdvals = dying
    sharded.stand_in = dying


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("warehouse")
    parser.add_argument("run_id")
    parser.add_argument("--mode", choices=("ddp", "fsdp"), default="ddp")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--cadence", type=int, default=2)
    parser.add_argument("--weights")
    parser.add_argument("--die-rank", type=int)
    parser.add_argument("--die-step", type=int)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    rank = dist.get_rank()
    torch.manual_seed(0)
    trained, model = wrapped(args.mode)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(100 + rank)  # each rank its own batches
    with layerlake.track(
        trained, suite="dist", model_name="neox", run_id=None if args.run_id == "new" else args.run_id, probe=PROBE, seed=0,
        warehouse=args.warehouse, cadence=args.cadence,
    ) as run:  # fmt: skip
        for step in range(args.steps):
            batch = torch.randint(0, 40, (4, 12), generator=generator)
            loss = trained(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            run.log(step, loss=loss.item())
            run.log(step, reduce="mean", loss_mean=loss.item())
            if run.due(step):
                print(f"taking {step}", flush=True)
                if rank == args.die_rank and step == args.die_step:
                    die_inside_snapshots(step)
            if run.snapshot(step, trained):
                run.wait()  # committed before training goes on: what a kill may not take away
                print(f"snapshot {step}", flush=True)
                state = full_state(model) if args.weights else None
                if args.weights and rank == 0:
                    torch.save(state, Path(args.weights) / f"step{step}.pt")
    dist.destroy_process_group()
    print("done", flush=True)


if __name__ == "__main__":
    main()
