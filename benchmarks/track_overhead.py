"""Tracking overhead: the same training with and without ``layerlake.track``, side by side.

Each embedded model is trained for ``--steps`` updates (its own shape, batch and sequence length, AdamW,
token ids drawn at random from its vocabulary: the cost is the same as the corpus's) twice per repeat,
alternately: plainly, and through a tracked run that logs loss, learning rate, gradient norm and tokens
seen at every update and takes a snapshot (the default probe shape and extraction options of
``conf/``, gradients included) at each step of the cadence. Wall time of the whole loop, best of the
repeats; the ratio tracked / plain is the overhead. Because the wall times of a shared machine wander
by a few per cent, it also reports the time the training thread spent inside the run's calls (log,
snapshot, and finish, which waits for the last commits and compacts), as a share of the plain loop's
time: that share is the overhead the tracker adds, measured without the noise of two separate runs. Usage:

    python benchmarks/track_overhead.py [--steps 512] [--cadences 64,128,256,pythia] [--repeats 2]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import torch


def settings():
    from layerlake.conf.compose import compose

    return compose(["progress=false"])


def train(spec, config, steps: int, run=None) -> tuple[float, float]:
    """Seconds for ``steps`` updates of a fresh model of ``spec`` (logged and snapshotted through
    ``run``), and the seconds of those spent in the run's calls."""
    from layerlake.etl.suite.model import new_model

    torch.manual_seed(0)
    model = new_model(spec, config.suite.train, seed=0).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.suite.train.lr)
    generator = torch.Generator().manual_seed(0)
    shape = (config.suite.train.batch_size, config.suite.train.seq_len)
    in_tracking = 0.0  # seconds the training thread spends in log, snapshot and finish
    started = time.perf_counter()
    for step in range(steps):
        batch = torch.randint(0, config.suite.train.vocab_size, shape, generator=generator)
        loss = model(input_ids=batch, labels=batch).loss
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


def tracked(spec, config, steps: int, cadence) -> tuple[float, float]:
    import layerlake
    from layerlake.etl.plan import extract_options

    probe = torch.randint(
        0, config.suite.train.vocab_size, (config.probe.n_sequences, config.probe.seq_len),
        generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        run = layerlake.track(
            suite="bench", model_name=spec.name, warehouse=folder, probe=probe, cadence=cadence,
            options=extract_options(config),
        )  # fmt: skip
        run.__enter__()
        seconds = train(spec, config, steps, run)
        assert not run.failures, run.failures
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=512)
    parser.add_argument("--cadences", default="64,128,256,pythia")
    parser.add_argument("--models", default="embedded-s,embedded-m,embedded-l")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    config = settings()
    torch.set_num_threads(config.suite.train.torch_threads)
    specs = [m for m in config.suite.models if m.name in args.models.split(",")]
    cadences = [int(c) if c.isdigit() else c for c in args.cadences.split(",")]
    print(f"# {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"{args.steps} updates, probe {config.probe.n_sequences} x {config.probe.seq_len}, "
          f"best of {args.repeats}")  # fmt: skip
    print("| model | cadence | snapshots | plain | tracked | ratio | in tracking calls | share of plain |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    from layerlake.etl.track import Cadence

    for spec in specs:
        plain: list[float] = []
        with_tracking: dict = {c: [] for c in cadences}
        for _ in range(args.repeats):  # alternately, so drift of a shared machine hits every side
            plain.append(train(spec, config, args.steps)[0])
            for cadence in cadences:
                with_tracking[cadence].append(tracked(spec, config, args.steps, cadence))
        for cadence in cadences:
            n = sum(1 for s in range(args.steps) if s in Cadence.parse(cadence))
            a = min(plain)
            b, calls = min(with_tracking[cadence])
            print(f"| {spec.name} | {cadence} | {n} | {a:.2f} s | {b:.2f} s | {b / a:.3f} | {calls:.2f} s "
                  f"| {calls / a:.1%} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
