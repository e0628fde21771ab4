"""GPU check: extract random-initialised checkpoints of Pythia-160m and Pythia-410m shapes on a CUDA
device with the local executor, and print per-checkpoint time split into load, forward, SVD and write.

Needs no network and no Ray (run by `benchmarks/gpu.sh` on a GPU machine). Usage:
    python benchmarks/gpu.py --out /tmp/gpu-bench [--steps 3] [--models 160m,410m]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

SHAPES = {  # Pythia's shapes (PAPER.md): layers, d_model, heads
    "70m": (6, 512, 8),
    "160m": (12, 768, 12),
    "410m": (24, 1024, 16),
}


def build_checkpoints(root: Path, label: str, steps: int) -> list[Path]:
    """Random-initialised GPT-NeoX folders of Pythia's shape, one per fake step (different seeds)."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    layers, d_model, heads = SHAPES[label]
    config = GPTNeoXConfig(
        vocab_size=50304,
        hidden_size=d_model,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * d_model,
        max_position_embeddings=2048,
        use_parallel_residual=True,
        tie_word_embeddings=False,
    )
    config.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}
    folders = []
    for step in range(steps):
        folder = root / f"pythia-{label}-random" / f"step{step}"
        if not (folder / "model.safetensors").exists():
            torch.manual_seed(step)
            GPTNeoXForCausalLM(config).save_pretrained(folder, safe_serialization=True)
        folders.append(folder)
    return folders


def random_probe(n_sequences: int, seq_len: int):
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


def main() -> int:
    import torch

    from layerlake.etl.task import CheckpointRef, ExtractOptions, ExtractTask
    from layerlake.etl.worker import run_task
    from layerlake.warehouse.writer import Warehouse

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--models", default="160m,410m")
    parser.add_argument("--n-sequences", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--gradients", action="store_true", help="also spectra of the loss gradients")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    probe = random_probe(args.n_sequences, args.seq_len)
    options = ExtractOptions(device=device, dtype=args.dtype, gradients=args.gradients)
    store = Warehouse(args.out / "warehouse")
    rows = []
    for label in args.models.split(","):
        for step, folder in enumerate(build_checkpoints(args.out / "suites", label, args.steps)):
            ref = CheckpointRef(
                "gpu-bench", f"pythia-{label}-random", step, f"step{step}", 0, "local", str(folder)
            )
            task = ExtractTask(ref, probe, options, "gpu-bench")
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            result = run_task(task)
            start = time.perf_counter()
            store.commit(task.task_id, ref.suite, ref.model, result.tables, {"step": step})
            write = time.perf_counter() - start
            row = {"model": ref.model, "step": step, **result.timings, "write": write}
            if device == "cuda":
                row["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "probe": f"{args.n_sequences} x {args.seq_len}, last token",
        "rows": rows,
    }
    (args.out / "gpu-results.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
