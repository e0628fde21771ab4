"""Precision of the forward and backward: what ``extract.autocast=bfloat16`` and
``extract.matmul_precision=tf32`` change in the stored numbers, against the default float32 pass.

One random-initialised GPT-NeoX checkpoint of a Pythia shape (``--shape``, all its layers, Pythia's
vocabulary), a random probe of ``--sequences`` x ``--seq-len`` tokens with the last ``--positions`` tokens
of each read out, gradients on: ``etl.extract.extract_from_model`` once per option set, on the same weights
(``--device``). Against the float32 pass, per stored table:

- **sketches**: the linear CKA between the float32 and the other pass's Gram of the same (layer, site,
  head) (1 minus it: how far the Gram moved), and the change of the CKA between consecutive layers of a
  site (what a study reads), both estimators;
- **activation_stats**: the relative change of mean_norm, rms, std, max_abs and kurtosis, the absolute
  change of frac_near_zero, and of the activation spectra's erank and stable rank;
- **spectra** (gradients; the weights' are taken before the pass and do not move): the relative change
  of erank, stable rank, the spectral norm and the fixed-tail power-law alpha, and the numerical ranks
  (each spectrum's own eps) that differ;
- the pass's time (forward, backward).

The largest and the median change over the rows are reported. TF32 exists on NVIDIA GPUs (Ampere and
newer) only: on the CPU the option changes nothing, which the figures show. Each result is printed and
saved (``--out DIR``: ``precision-<device>.json``) as it is measured. Usage:
    python benchmarks/precision.py [--shape 70m] [--device cpu|cuda] [--sequences 16] [--seq-len 128]
        [--positions 8] [--options autocast=bfloat16,matmul_precision=tf32] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

SHAPES = {"70m": (6, 512, 8), "160m": (12, 768, 12), "410m": (24, 1024, 16), "1.4b": (24, 2048, 16)}
VOCAB = 50304
SUMMARIES = ("mean_norm", "rms", "std", "max_abs", "kurtosis")
MEASURES = ("erank", "stable_rank", "spectral_norm", "powerlaw_alpha")


def build_model(label: str, device: str):
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    layers, d, heads = SHAPES[label]
    config = GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * d, max_position_embeddings=2048, use_parallel_residual=True,
        tie_word_embeddings=False,
    )  # fmt: skip
    config.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}
    torch.manual_seed(0)
    with torch.device(device):
        return GPTNeoXForCausalLM(config)


def probe(sequences: int, seq_len: int, positions: int):
    import torch

    from layerlake.etl.task import ProbeBatch

    ids = torch.randint(0, VOCAB, (sequences, seq_len), generator=torch.Generator().manual_seed(0))
    read = tuple((s, seq_len - 1 - p) for s in range(sequences) for p in range(positions))
    return ProbeBatch("precision", "random", tuple(tuple(r) for r in ids.tolist()), read, "sample")


def extract(model, batch, device: str, **options) -> tuple[dict, dict]:
    import copy

    from layerlake.etl.extract import extract_from_model
    from layerlake.etl.task import CheckpointRef, ExtractOptions

    ref = CheckpointRef("bench", "m", 0, "step0", 0, "local", "/nowhere")
    opts = ExtractOptions(gradients=True, weight_spectra=False, device=device, **options)  # weights: unmoved
    return extract_from_model(copy.deepcopy(model), ref, "0" * 64, batch, opts)


def keyed(table, key: tuple[str, ...]) -> dict:
    return {tuple(r[k] for k in key): r for r in table.to_pylist()}


def spread(values: list[float]) -> dict:
    import numpy as np

    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    return {"max": float(v.max()), "median": float(np.median(v))} if v.size else {"max": None, "median": None}


def relative(a, b) -> float | None:
    if a is None or b is None:
        return None
    return abs(a - b) / abs(b) if b != 0 else abs(a - b)


def compare(base: dict, other: dict, con) -> dict:
    """The changes ``other`` makes to ``base``'s stored numbers (see the module's docstring)."""
    import numpy as np
    import pyarrow as pa

    out: dict = {}
    sk_key = ("layer", "site", "head", "estimator", "kernel")
    b, o = keyed(base["sketches"], sk_key), keyed(other["sketches"], sk_key)
    unit = {k: np.asarray(v["gram"], np.float64) for k, v in b.items()}
    moved = {k: np.asarray(o[k]["gram"], np.float64) for k in b}

    def cka(x, y):
        return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))

    for estimator in ("biased", "debiased"):
        keys = [k for k in b if k[3] == estimator]
        out[f"sketch_1_minus_cka_{estimator}"] = spread([1 - cka(unit[k], moved[k]) for k in keys])
        pairs = [(k, (k[0] + 1, *k[1:])) for k in keys if (k[0] + 1, *k[1:]) in b]
        out[f"consecutive_layer_cka_change_{estimator}"] = spread(
            [abs(cka(moved[k], moved[n]) - cka(unit[k], unit[n])) for k, n in pairs]
        )
    st_key = ("layer", "site", "head")
    b, o = keyed(base["activation_stats"], st_key), keyed(other["activation_stats"], st_key)
    for column in SUMMARIES:
        out[f"activation_{column}"] = spread([relative(o[k][column], b[k][column]) for k in b])
    out["activation_frac_near_zero_abs"] = spread(
        [abs(o[k]["frac_near_zero"] - b[k]["frac_near_zero"]) for k in b]
    )
    for name, table, key in (("activation_spectra", "activation_stats", st_key),
                             ("gradient_spectra", "spectra", ("layer", "tensor", "matrix", "head"))):  # fmt: skip
        rows_b = [r for r in base[table].to_pylist() if r.get("tensor", "grad") == "grad"]
        rows_o = keyed(other[table], key)
        shape = ("n", "d") if table == "activation_stats" else ("rows", "cols")
        pairs = pa.table({
            "a": [r["sv"] for r in rows_b], "b": [rows_o[tuple(r[k] for k in key)]["sv"] for r in rows_b],
            "ea": [r["eps"] for r in rows_b], "eb": [rows_o[tuple(r[k] for k in key)]["eps"] for r in rows_b],
            "r": [r[shape[0]] for r in rows_b], "c": [r[shape[1]] for r in rows_b],
        })  # fmt: skip
        con.register("pairs", pairs)
        for measure in MEASURES:
            got = con.sql(
                f"select abs({measure}(b) - {measure}(a)) / abs({measure}(a)) from pairs"
            ).fetchall()
            out[f"{name}_{measure}"] = spread([g for (g,) in got])
        (differ,) = con.sql(
            "select count(*) filter (numerical_rank(a, r, c, ea) <> numerical_rank(b, r, c, eb)) from pairs"
        ).fetchall()[0]
        out[f"{name}_numerical_rank_differs"] = f"{differ} of {pairs.num_rows}"
        con.unregister("pairs")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="70m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sequences", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument(
        "--positions", type=int, default=8, help="tokens read out per sequence (n = x sequences)"
    )
    parser.add_argument("--options", default="autocast=bfloat16,matmul_precision=tf32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    import duckdb
    import torch

    from layerlake.warehouse.macros import install_functions

    torch.set_num_threads(args.threads)
    con = install_functions(
        duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    )
    device_kind = "cpu" if args.device == "cpu" else torch.cuda.get_device_name(args.device).replace(" ", "-")
    results = {
        "device": args.device, "device_kind": device_kind, "machine": platform.machine(), "cores": os.cpu_count(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "load_average": os.getloadavg()[0],
        "shape": args.shape, "probe": f"{args.sequences} x {args.seq_len}, last {args.positions} read out",
        "options": {},
    }  # fmt: skip

    def save() -> None:
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"precision-{device_kind}.json").write_text(json.dumps(results, indent=2))

    model = build_model(args.shape, args.device)
    batch = probe(args.sequences, args.seq_len, args.positions)
    start = time.perf_counter()
    base, base_times = extract(model, batch, args.device)
    results["float32"] = {"seconds": time.perf_counter() - start, "phases": base_times}
    save()
    options = [o for o in args.options.split(",") if o]
    if args.device != "cpu":  # both at once; TF32 changes nothing on the CPU
        options.append("autocast=bfloat16+matmul_precision=tf32")
    for option in options:
        settings = dict(part.split("=") for part in option.split("+"))
        start = time.perf_counter()
        other, times = extract(model, batch, args.device, **settings)
        seconds = time.perf_counter() - start
        results["options"][option] = {
            "seconds": seconds,
            "phases": times,
            "changes": compare(base, other, con),
        }
        print(json.dumps({option: results["options"][option]}), flush=True)
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
