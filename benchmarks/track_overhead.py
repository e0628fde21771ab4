"""Tracking overhead: the same training with and without ``layerlake.track``, side by side.

Each embedded model is trained for ``--steps`` updates (its own shape, batch and sequence length, AdamW,
token ids drawn at random from its vocabulary: the cost is the same as the corpus's) twice per repeat,
alternately: plainly, and through a tracked run that logs loss, learning rate, gradient norm and tokens
seen at every update and takes a snapshot (the default probe shape and extraction options of
``conf/``, gradients included) at each step of the cadence. Wall time of the whole loop, best of the
repeats; the ratio tracked / plain is the overhead. Because the wall times of a shared machine wander
by a few per cent, it also reports the time the training thread spent inside the run's calls (log,
snapshot, and finish, which waits for the last commits and compacts), as a share of the plain loop's
time: that share is the overhead the tracker adds, measured without the noise of two separate runs.

With ``--ddp`` each training is a DistributedDataParallel job of 2 CPU processes (gloo, one torch thread
each, each rank its own batches), tracked by every rank (the writer snapshots; each rank logs its own
numbers): the share is the writer's time in the run's calls against the plain job's wall time (the other
rank waits for the writer in the next all-reduce, so that is what the job loses).

With ``--custom`` each model is a plain ``torch.nn.Module`` of the embedded model's shape written here
(not a Hugging Face class: its own module names, a fused [Q | K | V] Linear, SDPA, a GELU MLP), called
on token ids and trained with its own cross-entropy, tracked through a declared ``Layout``. Usage:

    python benchmarks/track_overhead.py [--steps 512] [--cadences 64,128,256,pythia] [--repeats 2]
        [--ddp | --custom]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch import nn


def settings():
    from layerlake.conf.compose import compose

    return compose(["progress=false"])


class Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (m.view(b, t, self.heads, -1).transpose(1, 2) for m in self.qkv(x).split(d, dim=2))
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d: int, heads: int, d_mlp: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(d), Attention(d, heads)
        self.norm2, self.up, self.down = nn.LayerNorm(d), nn.Linear(d, d_mlp), nn.Linear(d_mlp, d)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.down(nn.functional.gelu(self.up(self.norm2(x))))


class CustomLM(nn.Module):
    """A language model of no library: token ids in, logits out."""

    def __init__(self, vocab: int, d: int, layers: int, heads: int, d_mlp: int, seq_len: int):
        super().__init__()
        self.embed, self.position = nn.Embedding(vocab, d), nn.Embedding(seq_len, d)
        self.blocks = nn.ModuleList(Block(d, heads, d_mlp) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)

    def forward(self, ids):
        x = self.embed(ids) + self.position(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def custom_layout(spec):
    from layerlake.core.layouts import Layout

    return Layout(
        name="custom_lm", blocks="blocks.*", attention="attn", qkv="stacked", value="attn.qkv.weight",
        out="attn.proj.weight", mlp_in={"dense_h_to_4h": "up.weight"}, mlp_out="down.weight",
        n_heads=spec.n_heads, call="tokens",
    )  # fmt: skip


def new_model(spec, config, custom: bool) -> nn.Module:
    if not custom:
        from layerlake.etl.suite.model import new_model as embedded_model

        return embedded_model(spec, config.suite.train, seed=0)
    train = config.suite.train
    width = max(train.seq_len, config.probe.seq_len)
    return CustomLM(train.vocab_size, spec.d_model, spec.n_layers, spec.n_heads, spec.d_mlp or 4 * spec.d_model,
                    width)  # fmt: skip


def loss_of(model, batch, custom: bool):
    if not custom:
        return model(input_ids=batch, labels=batch).loss
    logits = model(batch[:, :-1])
    return nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())


def train(
    spec, config, steps: int, run=None, rank: int | None = None, custom: bool = False
) -> tuple[float, float]:
    """Seconds for ``steps`` updates of a fresh model of ``spec`` (logged and snapshotted through
    ``run``), and the seconds of those spent in the run's calls. With a ``rank``: wrapped in DDP; with
    ``custom``: the model is a ``CustomLM`` of the spec's shape."""
    torch.manual_seed(0)
    model = new_model(spec, config, custom).train()
    if rank is not None:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.suite.train.lr)
    generator = torch.Generator().manual_seed(0 if rank is None else 100 + rank)
    shape = (config.suite.train.batch_size, config.suite.train.seq_len)
    in_tracking = 0.0  # seconds the training thread spends in log, snapshot and finish
    started = time.perf_counter()
    for step in range(steps):
        batch = torch.randint(0, config.suite.train.vocab_size, shape, generator=generator)
        loss = loss_of(model, batch, custom)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = loss.item()  # both loops read the loss, as any loop that prints it does
        if run is not None:
            entered = time.perf_counter()
            run.log(step, loss=value, lr=config.suite.train.lr, grad_norm=float(grad_norm),
                    tokens_seen=(step + 1) * shape[0] * shape[1])  # fmt: skip
            run.snapshot(step, model)
            in_tracking += time.perf_counter() - entered
    if run is not None:
        entered = time.perf_counter()
        run.finish()  # waits for the last commits and compacts: part of the cost
        in_tracking += time.perf_counter() - entered
    return time.perf_counter() - started, in_tracking


def tracked(spec, config, steps: int, cadence, custom: bool = False) -> tuple[float, float]:
    import layerlake
    from layerlake.etl.plan import extract_options

    probe = torch.randint(
        0, config.suite.train.vocab_size, (config.probe.n_sequences, config.probe.seq_len),
        generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        run = layerlake.track(
            suite="bench", model_name=spec.name, warehouse=folder, probe=probe, cadence=cadence,
            options=extract_options(config), layout=custom_layout(spec) if custom else None, quiet=True,
        )  # fmt: skip
        run.__enter__()
        seconds = train(spec, config, steps, run, custom=custom)
        assert not run.failures, run.failures
        return seconds


def ddp_rank(rank: int, port: int, spec_name: str, steps: int, cadence, folder: str | None, out: str) -> None:
    """One rank of a 2-process DDP job: plain (``folder`` None) or tracked into ``folder``; rank 0 writes
    its (seconds, seconds in tracking calls) to ``out``."""
    import json
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    config = settings()
    spec = next(m for m in config.suite.models if m.name == spec_name)
    run = None
    if folder is not None:
        import layerlake
        from layerlake.etl.plan import extract_options

        probe = torch.randint(
            0, config.suite.train.vocab_size, (config.probe.n_sequences, config.probe.seq_len),
            generator=torch.Generator().manual_seed(1),
        )  # fmt: skip
        run = layerlake.track(
            suite="bench", model_name=spec.name, run_id="ddp", warehouse=folder, probe=probe, cadence=cadence,
            options=extract_options(config), quiet=True,
        )  # fmt: skip
        run.__enter__()
        # what a long run imports once: not a cost of its snapshots (the one-process benchmark pays it once
        # for all its runs, in one interpreter)
        import layerlake.etl.extract
        import layerlake.etl.worker
        import layerlake.warehouse.compact  # noqa: F401
    dist.barrier()
    seconds = train(spec, config, steps, run, rank=rank)
    if run is not None:
        assert not run.failures, run.failures
    if rank == 0:
        Path(out).write_text(json.dumps(seconds))
    dist.destroy_process_group()


def ddp_job(spec_name: str, steps: int, cadence=None) -> tuple[float, float]:
    """(seconds, seconds in the writer's tracking calls) of one 2-process DDP job, plain without a cadence."""
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "seconds.json")
        warehouse = None if cadence is None else str(Path(folder) / "warehouse")
        mp.spawn(ddp_rank, args=(port, spec_name, steps, cadence, warehouse, out), nprocs=2)
        return tuple(json.loads(Path(out).read_text()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=512)
    parser.add_argument("--cadences", default="64,128,256,pythia")
    parser.add_argument("--models", default="embedded-s,embedded-m,embedded-l")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ddp", action="store_true", help="2-process DDP jobs (gloo, one thread each)")
    parser.add_argument(
        "--custom", action="store_true", help="a plain nn.Module tracked by a declared layout"
    )
    args = parser.parse_args()
    config = settings()
    if args.ddp:
        return ddp_main(args, config)
    torch.set_num_threads(config.suite.train.torch_threads)
    specs = [m for m in config.suite.models if m.name in args.models.split(",")]
    cadences = [int(c) if c.isdigit() else c for c in args.cadences.split(",")]
    print(f"# {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{args.steps} updates, probe {config.probe.n_sequences} x {config.probe.seq_len}, "
          f"best of {args.repeats}{', custom models by a declared layout' if args.custom else ''}")  # fmt: skip
    print("| model | cadence | snapshots | plain | tracked | ratio | in tracking calls | share of plain |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    from layerlake.etl.track import Cadence

    for spec in specs:
        plain: list[float] = []
        with_tracking: dict = {c: [] for c in cadences}
        for _ in range(args.repeats):  # alternately, so drift of a shared machine hits every side
            plain.append(train(spec, config, args.steps, custom=args.custom)[0])
            for cadence in cadences:
                with_tracking[cadence].append(tracked(spec, config, args.steps, cadence, args.custom))
        for cadence in cadences:
            n = sum(1 for s in range(args.steps) if s in Cadence.parse(cadence))
            a = min(plain)
            b, calls = min(with_tracking[cadence])
            print(f"| {spec.name} | {cadence} | {n} | {a:.2f} s | {b:.2f} s | {b / a:.3f} | {calls:.2f} s "
                  f"| {calls / a:.1%} |", flush=True)  # fmt: skip


def ddp_main(args, config) -> None:
    from layerlake.etl.track import Cadence

    specs = [m.name for m in config.suite.models if m.name in args.models.split(",")]
    cadences = [int(c) if c.isdigit() else c for c in args.cadences.split(",")]
    print(f"# {platform.machine()}, DDP on 2 processes (gloo, 1 thread each), torch {torch.__version__}, "
          f"{args.steps} updates, probe {config.probe.n_sequences} x {config.probe.seq_len}, "
          f"best of {args.repeats}")  # fmt: skip
    print(
        "| model | cadence | snapshots | plain | tracked | ratio | writer in tracking calls | share of plain |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in specs:
        plain: list[float] = []
        with_tracking: dict = {c: [] for c in cadences}
        for _ in range(args.repeats):  # alternately, so drift of a shared machine hits every side
            plain.append(ddp_job(name, args.steps)[0])
            for cadence in cadences:
                with_tracking[cadence].append(ddp_job(name, args.steps, cadence))
        for cadence in cadences:
            n = sum(1 for s in range(args.steps) if s in Cadence.parse(cadence))
            a = min(plain)
            b, calls = min(with_tracking[cadence])
            print(f"| {name} | {cadence} | {n} | {a:.2f} s | {b:.2f} s | {b / a:.3f} | {calls:.2f} s "
                  f"| {calls / a:.1%} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
