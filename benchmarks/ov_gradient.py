"""What the ``ov`` gradient (G_h = sum delta (A_h X)^T, ``etl.ov_gradient``) adds to a checkpoint's extraction.

The same random GPT-NeoX model (a small shape, Pythia-70m's and Pythia-160m's; vocabulary cut to 2048, which
changes the LM head's cost only) is extracted with gradients twice per repeat, alternately: with the
``gpt_neox`` preset (the hooks recompute each head's probabilities from SDPA's q and k and reduce G_h per
layer in the backward; then one d_model x d_model SVD per head and per layer more), and with the same
layout declaring ``probs: none`` (no ov gradient; everything else equal). Best of the repeats, per phase.
Usage:

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
from layerlake.etl import ov_gradient
from layerlake.etl.extract import extract_from_model
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


REDUCE = {"seconds": 0.0}
_reduce = ov_gradient.OvGradient._reduce


def _timed_reduce(self, layer, delta):  # the time spent reducing G_h (inside the backward)
    start = time.perf_counter()
    try:
        return _reduce(self, layer, delta)
    finally:
        REDUCE["seconds"] += time.perf_counter() - start


ov_gradient.OvGradient._reduce = _timed_reduce


def timed(model, layout, probe, batch_size) -> dict[str, float]:
    REDUCE["seconds"] = 0.0
    start = time.perf_counter()
    options = ExtractOptions(gradients=True, batch_size=batch_size)
    _, phases = extract_from_model(model, REF, "f" * 64, probe, options, layout=layout)
    return phases | {"total": time.perf_counter() - start, "reduce": REDUCE["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="small,70m,160m")
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d')}")  # fmt: skip
    without = dataclasses.replace(PRESETS["gpt_neox"], name="gpt_neox-noprobs", probs="none")
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 2048, (args.sequences, args.seq_len), generator=g).tolist()
    probe = ProbeBatch(
        "bench", "random", tuple(tuple(r) for r in ids),
        tuple((s, args.seq_len - 1) for s in range(args.sequences)), "last",
    )  # fmt: skip
    print("| shape | probe | with ov grad (s) | without (s) | extra (s) | extra % | of which: forward, "
          "backward (reduce inside it), svd, matrix_stats (s) |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for shape in args.shapes.split(","):
        model = model_of(shape)
        best = {"with": None, "without": None}
        for _ in range(args.repeats):
            for name, layout in (("with", "gpt_neox"), ("without", without)):
                found = timed(model, layout, probe, args.batch_size)
                if best[name] is None or found["total"] < best[name]["total"]:
                    best[name] = found
        w, wo = best["with"], best["without"]
        extra = w["total"] - wo["total"]
        parts = ", ".join(
            f"{w[p] - wo[p]:+.2f}" + (f" ({w['reduce']:.2f})" if p == "backward" else "")
            for p in ("forward", "backward", "svd", "matrix_stats")
        )
        print(f"| {shape} {SHAPES[shape]} | {args.sequences} x {args.seq_len} | {w['total']:.2f} | "
              f"{wo['total']:.2f} | {extra:.2f} | {100 * extra / wo['total']:.0f}% | {parts} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
