"""What the ``ov`` gradient (G_h = sum delta (A_h X)^T, ``etl.ov_gradient``) adds to a checkpoint's extraction.

A random GPT-NeoX model at a small shape, Pythia-70m's and Pythia-160m's (vocabulary cut to 2048, which
changes the LM head's cost only). Per shape: one whole extraction with gradients (``extract_from_model``)
without the ov gradient (the ``gpt_neox`` preset declaring ``probs: none``), the baseline; then the gradient
pass alone (``capture.run_pass``, forward and backward) with and without the OvGradient hooks, alternately,
best of the repeats, whose difference is the hooks' cost (recomputing each head's probabilities from SDPA's
q and k, checking them, reducing G_h in the backward); and the SVDs and entry stats of the matrices the ov
gradient adds (one d_model x d_model per head and per layer). The reduction's own time inside the
backward is timed too (a wrapper around ``OvGradient._reduce``). Extra = reduction + SVDs + stats, as a
share of the baseline extraction; the pass difference (which also holds the forward hooks' and the
torch-function mode's overhead) is shown beside it, noisier on a shared machine. Usage:

    python benchmarks/ov_gradient.py [--shapes small,70m,160m] [--sequences 4] [--seq-len 256] [--repeats 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from layerlake.core.layouts import PRESETS
from layerlake.etl import capture, layouts, metrics, ov_gradient
from layerlake.etl.extract import capture_targets, extract_from_model
from layerlake.etl.task import CheckpointRef, ExtractOptions, ProbeBatch

SHAPES = {  # d_model, layers, heads
    "small": (128, 4, 4),
    "70m": (512, 6, 8),
    "160m": (768, 12, 12),
}
REF = CheckpointRef("bench", "m", 0, "step0", 0, "local", "/nowhere")


def model_of(shape: str) -> torch.nn.Module:
    d, layers, heads = SHAPES[shape]
    cfg = GPTNeoXConfig(
        vocab_size=2048, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * d, max_position_embeddings=2048,
    )  # fmt: skip
    torch.manual_seed(0)
    return GPTNeoXForCausalLM(cfg).eval()


def baseline(model, probe, batch_size) -> float:
    """Seconds of one whole extraction with gradients, without the ov gradient."""
    without = dataclasses.replace(PRESETS["gpt_neox"], name="gpt_neox-noprobs", probs="none")
    start = time.perf_counter()
    extract_from_model(
        model, REF, "f" * 64, probe, ExtractOptions(gradients=True, batch_size=batch_size), layout=without
    )
    return time.perf_counter() - start


REDUCE = {"seconds": 0.0}
_reduce = ov_gradient.OvGradient._reduce


def _timed_reduce(self, layer, delta):  # the time spent reducing G_h (inside the backward)
    start = time.perf_counter()
    try:
        return _reduce(self, layer, delta)
    finally:
        REDUCE["seconds"] += time.perf_counter() - start


ov_gradient.OvGradient._reduce = _timed_reduce


def gradient_pass(model, probe, batch_size, with_ov: bool) -> float:
    """Seconds of the probe's forward and backward, with or without the ov gradient's hooks."""
    fitted = layouts.fit(model)
    ids = torch.tensor(probe.token_ids)
    positions = torch.tensor(probe.positions)
    ov = ov_gradient.OvGradient(fitted) if with_ov else None
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    REDUCE["seconds"] = 0.0
    start = time.perf_counter()
    capture.run_pass(model, ids, positions, capture_targets(fitted, ("resid_post",)), gradients=True,
                     batch_size=batch_size, ov_gradient=ov)  # fmt: skip
    return time.perf_counter() - start


def added_matrices(shape: str) -> tuple[float, float]:
    """Seconds of the SVDs and of the entry stats of the matrices the ov gradient adds."""
    d, layers, heads = SHAPES[shape]
    g = torch.Generator().manual_seed(2)
    matrices = [
        (torch.randn(d, d, generator=g, dtype=torch.float64), None) for _ in range(layers * (heads + 1))
    ]
    start = time.perf_counter()
    metrics.batched_svdvals(matrices)
    svd = time.perf_counter() - start
    start = time.perf_counter()
    for a, _ in matrices[:layers]:  # entry stats of the per-layer sum only
        metrics.entry_stats(a)
    return svd, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="small,70m,160m")
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d %H:%M')}")  # fmt: skip
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 2048, (args.sequences, args.seq_len), generator=g).tolist()
    probe = ProbeBatch(
        "bench", "random", tuple(tuple(r) for r in ids),
        tuple((s, args.seq_len - 1) for s in range(args.sequences)), "last",
    )  # fmt: skip
    print("| shape (d, layers, heads) | probe | extraction without (s) | pass with / without hooks (s) | "
          "reduction (s) | extra SVDs (s) | extra stats (s) | extra (s) | extra % |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for shape in args.shapes.split(","):
        model = model_of(shape)
        base = baseline(model, probe, args.batch_size)
        best = {True: float("inf"), False: float("inf")}
        reduce = float("inf")
        for _ in range(args.repeats):
            for with_ov in (True, False):
                best[with_ov] = min(best[with_ov], gradient_pass(model, probe, args.batch_size, with_ov))
                if with_ov:
                    reduce = min(reduce, REDUCE["seconds"])
        svd, stats = added_matrices(shape)
        extra = reduce + svd + stats
        print(f"| {shape} {SHAPES[shape]} | {args.sequences} x {args.seq_len} | {base:.2f} | "
              f"{best[True]:.2f} / {best[False]:.2f} | {reduce:.2f} | {svd:.2f} | {stats:.2f} | {extra:.2f} | "
              f"{100 * extra / base:.0f}% |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
