"""A training process for the tracking fault and concurrency tests: a tiny GPT-NeoX model trained for
``--steps`` updates through ``layerlake.track``, a snapshot at every step of ``--cadence``.

    python tests/track_workload.py WAREHOUSE RUN_ID [--steps N] [--cadence K] [--seed S] [--resume] [--hold-at S]

Prints ``snapshot <step>`` as each snapshot is queued (the first five once committed), and ``done`` at the end.
With ``--hold-at S`` it prints ``holding`` once step S's snapshot is committed and waits for a line on stdin
before it trains on: a run still training, for as long as a test needs one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import layerlake

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models  # noqa: E402

PROBE = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 18], [19, 20, 21, 22, 23, 24]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("warehouse")
    parser.add_argument("run_id")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cadence", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--start", type=int, default=0, help="first tracked step (a resumed run re-tracks from here)"
    )
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--hold-at", type=int, default=None, help="after this step, wait for a line on stdin")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    model = tiny_models.neox(seed=args.seed).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(args.seed)
    with layerlake.track(
        model, suite="workload", model_name="neox", run_id=args.run_id, probe=PROBE, seed=args.seed,
        warehouse=args.warehouse, cadence=args.cadence, resume=args.resume,
    ) as run:  # fmt: skip
        for step in range(args.steps):
            batch = torch.randint(0, 40, (4, 12), generator=generator)
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if step < args.start:
                continue  # replaying the steps before the resume point: the state a checkpoint would give
            run.log(step, loss=loss.item())
            if run.snapshot(step, model):
                if step < 5:
                    run.wait()  # the first five committed before they are announced: the kill test relies on them
                print(f"snapshot {step}", flush=True)
            if step == args.hold_at:
                run.wait()
                print("holding", flush=True)
                sys.stdin.readline()
    print("done", flush=True)


if __name__ == "__main__":
    main()
