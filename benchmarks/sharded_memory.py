"""Host memory of a snapshot of an FSDP2-sharded model: what the snapshot adds to a rank's resident set,
against the model's size, its largest matrix, and gathering the whole state dict at once.

Two CPU processes (gloo) shard a GPT-NeoX model with ``fully_shard`` (each block, then the root). In a
fresh pair of processes per measurement, rank 0's resident set (``/proc/self/statm``, sampled every
millisecond by a thread) is read after one training step and during: ``snapshot`` (``etl.sharded.snapshot_sharded``: the
weights' hash, weight spectra, the probe's pass, gradient spectra; a small probe so its activations stay
small), ``spectra`` (the weight spectra phase alone: gathers and SVDs), and ``gather`` (the naive way:
every parameter's ``full_tensor()`` kept, as a tracker that gathers the model first would). glibc is told
to map every allocation of 64 KiB or more on its own (``MALLOC_MMAP_THRESHOLD_``), so the resident set
follows the live tensors rather than the allocator's reserve. Usage:

    python benchmarks/sharded_memory.py [--hidden 768] [--layers 6] [--vocab 8192]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import torch

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE


class Peak:
    """The largest resident set seen while the block runs, above the one before it."""

    def __enter__(self) -> Peak:
        self.before = self.peak = rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss())
            time.sleep(0.001)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, rss())

    @property
    def added(self) -> int:
        return self.peak - self.before


def model(args):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64, intermediate_size=4 * args.hidden, max_position_embeddings=128,
    )  # fmt: skip
    torch.manual_seed(0)
    return GPTNeoXForCausalLM(config).train()


def rank_main(rank: int, port: int, what: str, args, out: str) -> None:
    import gc

    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from layerlake.etl import sharded
    from layerlake.etl.task import ExtractOptions
    from layerlake.etl.track import live_probe, training_state_kept

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    m = model(args)
    sizes = [p.numel() * p.element_size() for p in m.parameters()]
    total, largest = sum(sizes), max(p.numel() * p.element_size() for p in m.parameters() if p.ndim == 2)
    largest_block = max(sum(p.numel() * p.element_size() for p in b.parameters()) for b in m.gpt_neox.layers)
    for layer in m.gpt_neox.layers:
        fully_shard(layer)
    fully_shard(m)
    # a training step first (FSDP's lazy init, its buffers, the optimizer's state) and a small SVD (the
    # LAPACK and BLAS buffers a process allocates once): the snapshot's cost is what it adds to training
    optimizer = torch.optim.AdamW(m.parameters(), lr=1e-4)
    ids = torch.randint(0, args.vocab, (4, 64), generator=torch.Generator().manual_seed(rank))
    m(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    torch.linalg.svdvals(torch.randn(64, 32, dtype=torch.float64))
    gc.collect()
    probe = live_probe(torch.randint(0, args.vocab, (4, 16), generator=torch.Generator().manual_seed(1)))
    options = ExtractOptions(gradients=True, dtype="float32", device="cpu")
    dist.barrier()
    with Peak() as peak:
        if what == "snapshot":
            with training_state_kept(m):
                sharded.snapshot_sharded(m, 0, probe, options, writes=rank == 0)
        elif what == "spectra":
            from layerlake.etl.extract import Phases, Rows
            from layerlake.etl.layouts import fit

            rows = Rows(0, "", probe.probe_id, Phases(torch.device("cpu")))
            rows.timed.seconds["gather"] = 0.0
            sharded.add_spectra(rows, fit(m), options, "weight", rank == 0)
        else:
            kept = [sharded.full(p.detach()) for p in m.parameters()]
            del kept
    if rank == 0:
        Path(out).write_text(json.dumps({"added": peak.added, "total": total, "largest": largest,
                                         "largest_block": largest_block}))  # fmt: skip
    dist.destroy_process_group()


def measure(what: str, args) -> dict:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "peak.json")
        mp.spawn(rank_main, args=(port, what, args, out), nprocs=2)
        return json.loads(Path(out).read_text())


def main() -> None:
    # Every allocation of 64 KiB or more its own mapping, given back when freed (glibc): the resident set
    # then follows the live tensors instead of what the allocator keeps for reuse.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=8192)
    args = parser.parse_args()
    mib = 2**20
    results = {what: measure(what, args) for what in ("spectra", "snapshot", "gather")}
    first = results["gather"]
    print(f"# GPT-NeoX d={args.hidden}, {args.layers} layers, vocab {args.vocab}: model {first['total'] / mib:.0f} MiB "
          f"(float32), largest matrix {first['largest'] / mib:.1f} MiB, largest block {first['largest_block'] / mib:.1f} MiB; "
          f"2 ranks, gloo, CPU; rank 0's resident set above its level before")  # fmt: skip
    print("| what | added on rank 0 | x largest matrix | share of the model |")
    print("| --- | --- | --- | --- |")
    for what, r in results.items():
        print(
            f"| {what} | {r['added'] / mib:.1f} MiB | {r['added'] / r['largest']:.1f} | {r['added'] / r['total']:.0%} |"
        )


if __name__ == "__main__":
    main()
