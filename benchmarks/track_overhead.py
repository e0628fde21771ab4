"""Tracking overhead: the same training with and without ``layerlake.track``, side by side.

Each embedded model is trained for ``--steps`` updates (its own shape, batch and sequence length, AdamW,
token ids drawn at random from its vocabulary: the cost is the same as the corpus's) twice per repeat,
alternately: plainly, and through a tracked run that logs loss, learning rate, gradient norm and tokens
seen at every update and takes a snapshot (the default probe shape and extraction options of
``conf/``, gradients included) at each step of the cadence. Wall time of the whole loop, best of the
repeats; the ratio tracked / plain is the overhead. Usage:

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


def train(spec, config, steps: int, run=None) -> float:
    """Seconds for ``steps`` updates of a fresh model of ``spec`` (logged and snapshotted through ``run``)."""
    from layerlake.etl.suite.model import new_model

    torch.manual_seed(0)
    model = new_model(spec, config.suite.train, seed=0).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.suite.train.lr)
    generator = torch.Generator().manual_seed(0)
    shape = (config.suite.train.batch_size, config.suite.train.seq_len)
    started = time.perf_counter()
    for step in range(steps):
        batch = torch.randint(0, config.suite.train.vocab_size, shape, generator=generator)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if run is not None:
            run.log(step, loss=loss.item(), lr=config.suite.train.lr, grad_norm=float(grad_norm),
                    tokens_seen=(step + 1) * shape[0] * shape[1])  # fmt: skip
            run.snapshot(step, model)
        else:
            loss.item()  # the plain loop reads its loss too, as any loop that prints it does
    if run is not None:
        run.finish()  # waits for the last commits and compacts: part of the cost
    return time.perf_counter() - started


def tracked(spec, config, steps: int, cadence) -> float:
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
    print("| model | cadence | snapshots | plain | tracked | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    from layerlake.etl.track import Cadence

    for spec in specs:
        plain: list[float] = []
        with_tracking: dict = {c: [] for c in cadences}
        for _ in range(args.repeats):  # alternately, so drift of a shared machine hits every side
            plain.append(train(spec, config, args.steps))
            for cadence in cadences:
                with_tracking[cadence].append(tracked(spec, config, args.steps, cadence))
        for cadence in cadences:
            n = sum(1 for s in range(args.steps) if s in Cadence.parse(cadence))
            a, b = min(plain), min(with_tracking[cadence])
            print(f"| {spec.name} | {cadence} | {n} | {a:.2f} s | {b:.2f} s | {b / a:.3f} |", flush=True)


if __name__ == "__main__":
    main()
