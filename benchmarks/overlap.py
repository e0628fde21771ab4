"""Overlapped loading: the same tasks with prefetch off and on, side by side, alternating and repeated.

Random-initialised GPT-NeoX checkpoints of Pythia-70m and Pythia-160m shapes (safetensors folders, float32),
a small random probe, gradients on (weight spectra off unless --weight-spectra: their SVDs dwarf the
loads), through the local executor, each result committed to a warehouse as the driver does. Each run
is a fresh process (a worker keeps weight spectra it has computed; a second run in one process would
reuse them). Per run: end-to-end time, the sum of the phases (load + compute of every task),
and how much of the load the computes hid: measured per task (``load - load_wait``, summed over
``load``), and from the end-to-end time, ``1 - (end_to_end - sum of compute - commits) / load``.

Before each run the page cache is dropped (``/proc/sys/vm/drop_caches``, as root) so the loads read
the disk; when that is not allowed, the loads come from the page cache and the output says so.

    python benchmarks/overlap.py --out /tmp/overlap-bench [--checkpoints 4] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale  # noqa: E402  (Pythia's shapes and their configs)

SHAPES = {label: scale.SHAPES[label] for label in ("70m", "160m")}


def build_checkpoints(root: Path, label: str, count: int) -> list[Path]:
    """Random-initialised GPT-NeoX folders of Pythia's shape (``scale.neox_config``), one per fake step
    (a seed each)."""
    import torch
    from transformers import GPTNeoXForCausalLM

    folders = []
    for step in range(count):
        folder = root / f"pythia-{label}-random" / f"step{step}"
        if not (folder / "model.safetensors").exists():
            torch.manual_seed(step)
            GPTNeoXForCausalLM(scale.neox_config(label)).save_pretrained(folder, safe_serialization=True)
        folders.append(folder)
    return folders


def random_probe(n_sequences: int, seq_len: int):
    """Random token ids over Pythia's vocabulary, the last position of each sequence read out."""
    import torch

    from layerlake.core.hashing import stable_hash
    from layerlake.etl.task import ProbeBatch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50304, (n_sequences, seq_len), generator=generator).tolist()
    token_ids = tuple(tuple(row) for row in ids)
    positions = tuple((i, seq_len - 1) for i in range(n_sequences))
    probe_id = stable_hash({"ids": token_ids, "positions": positions})[:16]
    return ProbeBatch(
        probe_id=probe_id, source="random", token_ids=token_ids, positions=positions, rule="last"
    )


def drop_page_cache() -> bool:
    """Write back and drop the page cache (root only); whether it worked."""
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def make_tasks(out: Path, count: int, probe, threads: int, weight_spectra: bool):
    from layerlake.etl.task import CheckpointRef, ExtractOptions, ExtractTask

    options = ExtractOptions(gradients=True, weight_spectra=weight_spectra, torch_threads=threads)
    tasks = []
    for label in SHAPES:
        for step, folder in enumerate(build_checkpoints(out / "suites", label, count)):
            ref = CheckpointRef(
                "overlap", f"pythia-{label}-random", step, f"step{step}", 0, "local", str(folder)
            )
            tasks.append(ExtractTask(ref, probe, options, "overlap-bench"))
    return tasks


def one_run(tasks, prefetch: bool, warehouse_dir: Path, cold: bool) -> dict:
    """The tasks through the local executor, each result committed; the run's figures."""
    from layerlake.conf.schema import ExecutorConfig
    from layerlake.etl.executors import LocalExecutor
    from layerlake.warehouse.writer import Warehouse

    shutil.rmtree(warehouse_dir, ignore_errors=True)
    store = Warehouse(warehouse_dir)
    dropped = drop_page_cache() if cold else False
    load = load_wait = compute = commit = 0.0
    start = time.perf_counter()
    for outcome in LocalExecutor(ExecutorConfig(prefetch=prefetch)).run(tasks):
        if outcome.result is None:
            raise SystemExit(f"{outcome.task.ref.model} {outcome.task.ref.revision}: {outcome.error}")
        timings, ref = outcome.result.timings, outcome.task.ref
        load += timings["load"]
        load_wait += timings["load_wait"]
        compute += timings["total"] - timings["load_wait"]
        committing = time.perf_counter()
        store.commit(outcome.task.task_id, ref.suite, ref.model, outcome.result.tables, {"step": ref.step})
        commit += time.perf_counter() - committing
    end_to_end = time.perf_counter() - start
    return {
        "prefetch": prefetch,
        "page_cache_dropped": dropped,
        "end_to_end": end_to_end,
        "sum_of_phases": load + compute + commit,
        "load": load,
        "load_wait": load_wait,
        "compute": compute,
        "commit": commit,
        "hidden_per_task": 1 - load_wait / load,
        "hidden_end_to_end": 1 - (end_to_end - compute - commit) / load,
    }


def main() -> int:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoints", type=int, default=4, help="checkpoints per model shape")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each (off, on, off, on ...)")
    parser.add_argument("--n-sequences", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--warm", action="store_true", help="keep the page cache (loads from memory)")
    parser.add_argument("--weight-spectra", action="store_true", help="also the weights' spectra (long SVDs)")
    parser.add_argument("--one-run", choices=["off", "on"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    probe = random_probe(args.n_sequences, args.seq_len)
    tasks = make_tasks(args.out, args.checkpoints, probe, args.threads, args.weight_spectra)
    if args.one_run:  # one run in this fresh process: nothing cached from another run
        row = one_run(tasks, args.one_run == "on", args.out / "warehouse", cold=not args.warm)
        print(json.dumps(row), flush=True)
        return 0
    runs = []
    for repeat in range(args.repeats):
        for prefetch in ("off", "on"):
            command = [sys.executable, __file__, *sys.argv[1:], "--one-run", prefetch]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            row = json.loads(output.strip().splitlines()[-1]) | {"repeat": repeat}
            runs.append(row)
            print(
                json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),
                flush=True,
            )
    summary = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "tasks": len(tasks),
        "probe": f"{args.n_sequences} x {args.seq_len}, gradients on, weight spectra {args.weight_spectra}",
        "runs": runs,
    }
    (args.out / "overlap-results.json").write_text(json.dumps(summary, indent=2))
    for prefetch in (False, True):
        mine = [r for r in runs if r["prefetch"] == prefetch]
        best = min(mine, key=lambda r: r["end_to_end"])
        print(
            f"prefetch {'on ' if prefetch else 'off'}: end-to-end {best['end_to_end']:.1f} s (best of "
            f"{len(mine)}), phases {best['sum_of_phases']:.1f} s, load {best['load']:.1f} s, "
            f"compute {best['compute']:.1f} s, hidden {best['hidden_per_task']:.0%} per task, "
            f"{best['hidden_end_to_end']:.0%} end to end"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
