"""GPU check: layerlake's extraction on a CUDA device at Pythia's shapes, against the bare minimum.

Needs no network and no Ray (run by ``benchmarks/gpu.sh`` on a GPU machine; the local executor's
prefetching pipeline, ``etl.prefetch.run_tasks``). Two parts, figures to ``<out>/gpu-results.json``:

1. **Cost per shape** (70m, 160m, 410m by default) at the study's probe, 128 sequences x 2048 tokens
   (last token read out), gradients on, ``--batch-size`` sequences per forward and backward: per
   checkpoint, layerlake's phases and wall time against ``benchmarks/scale.py``'s bare minimum (load,
   forward, backward, every SVD) on the same files, and the peak GPU memory of each.
2. **Largest shape that fits** (``--fit 1.4b,2.8b,6.9b``): one checkpoint each, largest last, with
   gradients and micro-batching; a shape that runs out of device memory is recorded as not fitting and
   the larger ones are skipped.

Checkpoints are random-initialised GPT-NeoX folders of each shape (safetensors, float16 as Pythia's
are published, loaded as float32), built on the device (fast) and deleted after use. Usage:
    python benchmarks/gpu.py --out /tmp/gpu [--shapes 70m,160m,410m] [--fit 1.4b,2.8b,6.9b]
        [--checkpoints 2] [--n-sequences 128] [--seq-len 2048] [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale  # noqa: E402  (the bare minimum and the shapes' configs)

SHAPES = {  # Pythia's shapes (PAPER.md): layers, d_model, heads
    "70m": (6, 512, 8),
    "160m": (12, 768, 12),
    "410m": (24, 1024, 16),
    "1.4b": (24, 2048, 16),
    "2.8b": (32, 2560, 32),
    "6.9b": (32, 4096, 32),
}
scale.SHAPES.update(SHAPES)


def build_checkpoints(root: Path, label: str, steps: int, device: str) -> list[Path]:
    """Random-initialised folders of ``label``'s shape, one per fake step (seed = step), float16."""
    import torch
    from transformers import GPTNeoXForCausalLM

    folders = []
    for step in range(steps):
        folder = root / f"pythia-{label}-random" / f"step{step}"
        if not (folder / "model.safetensors").exists():
            torch.manual_seed(step)
            with torch.device(device):
                model = GPTNeoXForCausalLM(scale.neox_config(label)).half()
            model.save_pretrained(folder, safe_serialization=True)
            del model
            torch.cuda.empty_cache() if device.startswith("cuda") else None
        folders.append(folder)
    return folders


def random_probe(n_sequences: int, seq_len: int):
    """``n_sequences`` x ``seq_len`` random token ids, the last token of each read out."""
    import torch

    from layerlake.core.hashing import stable_hash
    from layerlake.etl.task import ProbeBatch

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, scale.VOCAB, (n_sequences, seq_len), generator=generator).tolist()
    token_ids = tuple(tuple(row) for row in ids)
    positions = tuple((i, seq_len - 1) for i in range(n_sequences))
    probe_id = stable_hash({"ids": token_ids, "positions": positions})[:16]
    return ProbeBatch(
        probe_id=probe_id, source="random", token_ids=token_ids, positions=positions, rule="last"
    )


def run_layerlake(folders: list[Path], label: str, probe, options, store) -> dict:
    """layerlake's local executor path over ``folders``: prefetching pipeline, then each commit."""

    from layerlake.etl.prefetch import run_tasks
    from layerlake.etl.task import CheckpointRef, ExtractTask
    from layerlake.etl.worker import process_weight_spectra

    process_weight_spectra().entries.clear()  # every shape's spectra computed, none reused

    tasks = [
        ExtractTask(
            CheckpointRef("gpu", f"pythia-{label}", s, f"step{s}", 0, "local", str(f)), probe, options
        )
        for s, f in enumerate(folders)
    ]
    reset_peak()
    start, rows = time.perf_counter(), []
    for task, (result, error, _detail) in zip(tasks, run_tasks(tasks), strict=True):
        if result is None:
            raise RuntimeError(f"{task.ref.model} step {task.ref.step}: {error}")
        began = time.perf_counter()
        store.commit(task.task_id, "gpu", task.ref.model, result.tables, {"step": task.ref.step})
        rows.append(result.timings | {"write": time.perf_counter() - began})
    wall = time.perf_counter() - start
    phases = {k: sum(r.get(k, 0.0) for r in rows) / len(rows) for k in rows[0]}
    return {"per_checkpoint": wall / len(folders), "phases": phases, "peak_gpu_gib": peak_gib()}


def run_bare(folders: list[Path], probe, device: str, batch_size: int) -> dict:
    import torch

    ids = torch.tensor(probe.token_ids, dtype=torch.long)
    positions = torch.tensor(probe.positions, dtype=torch.long)
    reset_peak()
    start = time.perf_counter()
    runs = [scale.bare_checkpoint(f, ids, positions, device, batch_size) for f in folders]
    wall = time.perf_counter() - start
    phases = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
    return {"per_checkpoint": wall / len(folders), "phases": phases, "peak_gpu_gib": peak_gib()}


def reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    """The largest device memory allocated since ``reset_peak`` (None without a GPU)."""
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def main() -> int:
    import torch

    from layerlake.etl.task import ExtractOptions
    from layerlake.warehouse.writer import Warehouse

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shapes", default="70m,160m,410m")
    parser.add_argument("--fit", default="1.4b,2.8b,6.9b", help="shapes tried for fit, smallest first")
    parser.add_argument("--checkpoints", type=int, default=2)
    parser.add_argument("--n-sequences", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward/backward chunk")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: nothing to check (use --device cpu with a small probe to try the script)")
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 as on the CPU: same numbers, fair timings
    args.out.mkdir(parents=True, exist_ok=True)
    probe = random_probe(args.n_sequences, args.seq_len)
    options = ExtractOptions(device=args.device, gradients=True, batch_size=args.batch_size)
    store = Warehouse(args.out / "warehouse")
    summary: dict = {
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor(),
        "memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "probe": f"{args.n_sequences} x {args.seq_len}, last token; batch_size {args.batch_size}; gradients on",
        "shapes": {},
        "fit": {},
    }  # fmt: skip
    save = lambda: (args.out / "gpu-results.json").write_text(json.dumps(summary, indent=2))  # noqa: E731
    for label in [s for s in args.shapes.split(",") if s]:
        folders = build_checkpoints(args.out / "suites", label, args.checkpoints, args.device)
        bare = run_bare(folders, probe, args.device, args.batch_size)
        layerlake = run_layerlake(folders, label, probe, options, store)
        ratio = layerlake["per_checkpoint"] / bare["per_checkpoint"]
        summary["shapes"][label] = {"ratio": ratio, "bare": bare, "layerlake": layerlake}
        print(json.dumps({label: summary["shapes"][label]}), flush=True)
        save()
    for label in [s for s in args.fit.split(",") if s]:
        folder = build_checkpoints(args.out / "fit", label, 1, args.device)
        try:
            result = run_layerlake(folder, label, probe, options, store)
            summary["fit"][label] = {"fits": True, **result}
        except (torch.OutOfMemoryError, RuntimeError) as error:
            summary["fit"][label] = {"fits": False, "error": str(error).splitlines()[0][:300]}
        finally:
            shutil.rmtree(args.out / "fit", ignore_errors=True)
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
        print(json.dumps({label: summary["fit"][label]}), flush=True)
        save()
        if not summary["fit"][label]["fits"]:
            break
    shutil.rmtree(args.out / "suites", ignore_errors=True)
    shutil.rmtree(args.out / "warehouse", ignore_errors=True)
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
