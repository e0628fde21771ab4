"""Spectra fast and exact: how layerlake's stored singular values are computed, timed and checked at
Pythia's shapes (70m, 160m, 410m, 1.4b, 2.8b), on the CPU or a GPU (``--device``).

**Matrices.** For each shape, ``--layers`` GPT-NeoX blocks of Pythia's shape (d_model, 4 d_model, heads;
random-initialised, seed 0, vocabulary 512: the embeddings take no spectra), the gradients from one
backward of the next-token loss on a random probe of ``--tokens`` tokens; then every matrix whose spectrum
layerlake stores, as ``etl.sites.block_matrices`` gives them (fused and split Q, K, V, dense, both MLP
matrices, the per-layer and per-head OV of the weights; the same parameters' gradients with the product
rule ``ov_product_rule``), and the ``ov`` gradient G_h of every head and of the layer (d_model x d_model,
from the pass's hooks, ``etl.ov_gradient``, as extraction takes it). A layer's matrices have the same
shapes in every layer, so one layer's time times the layer count is a checkpoint's (weights and
gradients).

**Methods**, each on the same matrices, alternately, best of ``--repeats`` (CPU time on the CPU, the
synchronised wall time on a GPU):

- ``svd``: float64 ``torch.linalg.svdvals`` on the tall side (``etl.metrics.batched_svdvals`` with
  ``method=svd``: one call per matrix on the CPU, one batched call per shape on a GPU);
- ``gram``: ``method=gram``: the eigenvalues of the float64 Gram of the short side
  (a matrix multiply, then ``eigvalsh``) where the spread lets them be exact, ``svdvals`` for the rest;
- ``gram_deflated``: ``method=gram_deflated``: the Gram's eigenvalues where they are exact, the rest
  from the matrix restricted to the Gram's other eigenvectors, again by its Gram (symmetric
  eigensolvers and matrix multiplies only, no SVD but of tails of at most 32 columns);
- ``gram_all``: the Gram's eigenvalues for every matrix, no fallback: what the Gram alone gets wrong;
- ``float32``: ``svdvals`` in float32 (``extract.spectra_precision=float32``);
- ``f32_refined``: float32 with float64 refinement: the float32 Gram's eigenvectors, orthonormalised in
  float64 (QR), and the float64 Rayleigh quotients ``|m q_i|^2`` as the squared singular values.

**Accuracy** against ``svd``, per stored measure, computed by the warehouse's own SQL macros: erank, PER
(erank / min(rows, cols)), stable rank, the fixed-tail power-law alpha and WeightWatcher's alpha (the
largest relative difference over the matrices) and the numerical rank at float64's tolerance (how many
matrices differ: the strictest test of the small values). The
small singular values, which erank and the numerical rank read, separately: the largest relative error
of the values below 1e-2 s_1, and every value's error in units of eps64 s_1 (svdvals' own accuracy).

**Known spectra** (``--known-shapes``): square d x d and tall 4d x d matrices with prescribed singular
values (log-spread to condition numbers 10, 100, 1e4, 1e8; half of them exactly 0; two clusters; a power
law): each method against the truth.

Each figure is printed and saved (``--out DIR``: ``spectra-<device>.json``) as soon as it is measured, so a
run cut by a time limit keeps what it measured. Usage:
    python benchmarks/spectra.py [--device cpu|cuda] [--shapes 70m,160m,410m,1.4b,2.8b] [--layers 1]
        [--repeats 2] [--methods svd,gram,gram_deflated,gram_all,float32,f32_refined] [--threads 1]
        [--out DIR]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

SHAPES = {  # Pythia's shapes: layers, d_model, heads (d_ff = 4 d_model)
    "70m": (6, 512, 8),
    "160m": (12, 768, 12),
    "410m": (24, 1024, 16),
    "1.4b": (24, 2048, 16),
    "2.8b": (32, 2560, 32),
}
METHODS = ("svd", "gram", "gram_deflated", "gram_all", "float32", "f32_refined")
MEASURES = ("erank", "per", "stable_rank", "powerlaw_alpha", "ww_alpha")
EPS64 = 2.0**-52


# --- the matrices ----------------------------------------------------------------------------------


def block_matrices(label: str, layers: int, tokens: int, device: str) -> list[tuple[str, tuple]]:
    """``[(name, (a, b))]``: every stored matrix of ``layers`` Pythia-shaped blocks, weights and gradients."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from layerlake.etl import capture, layouts, ov_gradient, sites
    from layerlake.etl.extract import ov_gradient_matrices

    _, d, heads = SHAPES[label]
    config = GPTNeoXConfig(
        vocab_size=512, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * d, max_position_embeddings=2048, use_parallel_residual=True,
        tie_word_embeddings=False,
    )  # fmt: skip
    config.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}
    torch.manual_seed(0)
    with torch.device(device):
        model = GPTNeoXForCausalLM(config)
    seq = min(tokens, 512)
    ids = torch.randint(0, 512, (max(1, tokens // seq), seq), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)
    fitted = layouts.fit(model)
    ov = ov_gradient.OvGradient(fitted)  # G_h of each head, reduced from the pass's hooks
    positions = torch.tensor([[0, seq - 1]], device=device)
    capture.run_pass(model, ids, positions, {}, gradients=True, call=fitted.layout.call, ov_gradient=ov)
    out = []
    for block in fitted.blocks:
        for tensor in ("weight", "grad"):
            found = sites.block_matrices(block, fitted.layout, fitted.shape, "true_v", tensor)
            if tensor == "grad":
                found.update(ov_gradient_matrices(ov, block.index))
            for (matrix, head), (a, b) in found.items():
                name = f"{block.index}.{tensor}.{matrix}" + ("" if head is None else f".{head}")
                out.append((name, (a.detach(), None if b is None else b.detach())))
    return out


def known_spectra(n: int, seed: int):
    """``{name: singular values}``: n values each, descending, float64."""
    import torch

    g = torch.Generator().manual_seed(seed)
    log = {
        f"cond_{c:.0e}": torch.logspace(0, -math.log10(c), n, dtype=torch.float64)
        for c in (1e1, 1e2, 1e4, 1e8)
    }
    half = torch.cat(
        [torch.logspace(0, -1, n // 2, dtype=torch.float64), torch.zeros(n - n // 2, dtype=torch.float64)]
    )
    clusters = torch.cat([torch.ones(n // 2), torch.full((n - n // 2,), 1e-2)]).double()
    clusters = clusters * (1 + 1e-3 * torch.rand(n, generator=g, dtype=torch.float64))
    power = torch.arange(1, n + 1, dtype=torch.float64) ** -1.0
    spectra = {**log, "rank_half": half, "two_clusters": clusters, "power_law": power}
    return {k: v.sort(descending=True).values for k, v in spectra.items()}


def with_spectrum(rows: int, s, seed: int, device: str):
    """A rows x len(s) float64 matrix with singular values s (random orthonormal factors)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n = s.numel()
    u, _ = torch.linalg.qr(torch.randn(rows, n, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return ((u * s) @ v.T).to(device)


# --- the methods -------------------------------------------------------------------------------------


def run_method(method: str, matrices: list[tuple]) -> list:
    """The float64 singular values of each ``(a, b)``, descending, by ``method``."""
    import torch

    from layerlake.core.choices import SpectraMethod
    from layerlake.etl import metrics

    if method in ("svd", "gram", "gram_deflated"):
        return metrics.batched_svdvals(matrices, method=SpectraMethod(method))
    if method == "float32":
        return metrics.batched_svdvals(matrices, dtype=torch.float32, method=SpectraMethod.svd)
    out = []
    for a, b in matrices:
        core, zeros = metrics._svd_core(a, b, torch.float64)
        sv = gram_all(core) if method == "gram_all" else f32_refined(core)
        out.append(torch.cat([sv, sv.new_zeros(zeros)]) if zeros else sv)
    return out


def gram_all(m):
    """sqrt of the float64 Gram's eigenvalues (negative ones, rounding, as 0), descending."""
    import torch

    return torch.linalg.eigvalsh(m.mT @ m).flip(-1).clamp_min(0).sqrt()


def f32_refined(m):
    """float32 eigenvectors of the Gram, orthonormalised in float64; float64 Rayleigh quotients."""
    import torch

    vectors = torch.linalg.eigh((m.mT @ m).to(torch.float32)).eigenvectors.to(torch.float64)
    q, _ = torch.linalg.qr(vectors)
    return torch.linalg.vector_norm(m @ q, dim=0).sort(descending=True).values


def timed(work, device: str) -> tuple[float, object]:
    """``(seconds, result)``: on a GPU the wall time (synchronised), on the CPU the process's CPU time,
    which a busy shared machine disturbs far less than the wall time (with one torch thread it is the
    work itself; with more it adds their times up)."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        start = time.perf_counter()
        result = work()
        torch.cuda.synchronize()
        return time.perf_counter() - start, result
    start = time.process_time()
    result = work()
    return time.process_time() - start, result


# --- accuracy ----------------------------------------------------------------------------------------


def measure_errors(con, shapes: list[tuple[int, int]], reference: list, got: list) -> dict:
    """The largest relative difference of each measure (the warehouse's macros), the numerical ranks
    that differ, and the small values' errors, of ``got`` against ``reference``."""
    import numpy as np
    import pyarrow as pa

    table = pa.table({
        "rows": pa.array([r for r, _ in shapes], pa.int32()), "cols": pa.array([c for _, c in shapes], pa.int32()),
        "ref": [v.cpu().numpy() for v in reference], "got": [v.cpu().numpy() for v in got],
    })  # fmt: skip
    con.register("pairs", table)
    errors = {}
    for measure in MEASURES:
        call = "per({}, least(rows, cols))" if measure == "per" else f"{measure}({{}})"
        a, b = call.format("got"), call.format("ref")
        (worst, undefined_differs) = con.sql(
            f"select max(abs({a} - {b}) / abs({b})), count(*) filter (({a} is null) <> ({b} is null)) from pairs"
        ).fetchall()[0]
        errors[measure] = worst if not undefined_differs else float("inf")
    (ranks,) = con.sql(
        "select count(*) filter (numerical_rank(got, rows, cols, $e) <> numerical_rank(ref, rows, cols, $e)) from pairs",
        params={"e": EPS64},  # the float64 SVD's tolerance: the strictest test of the small values
    ).fetchall()[0]
    errors["numerical_rank_differs"] = ranks
    con.unregister("pairs")
    small_rel, eps_units = 0.0, 0.0
    for r, v in zip(reference, got, strict=True):
        r, v = r.cpu().numpy(), v.cpu().numpy()
        if r.size == 0 or r[0] == 0:
            continue
        eps_units = max(eps_units, float(np.abs(v - r).max() / (EPS64 * r[0])))
        small = (r < 1e-2 * r[0]) & (r > 0)
        if small.any():
            small_rel = max(small_rel, float((np.abs(v - r)[small] / r[small]).max()))
    errors["small_values_relative"] = small_rel
    errors["error_in_eps_s1"] = eps_units
    return errors


def shape_of(pair) -> tuple[int, int]:
    a, b = pair
    return (a.shape[0], a.shape[1] if b is None else b.shape[1])


# --- main ---------------------------------------------------------------------------------------------


def save(results: dict, out: Path | None) -> None:
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"spectra-{results['device_kind']}.json").write_text(json.dumps(results, indent=2))


def model_shapes(args, con, results: dict) -> None:
    import torch

    from layerlake.etl import metrics

    for label in args.shapes.split(","):
        matrices = block_matrices(label, args.layers, args.tokens, args.device)
        pairs = [p for _, p in matrices]
        entry = results["shapes"].setdefault(label, {"matrices": len(pairs), "layers": args.layers})
        kinds: dict[str, list[int]] = {}  # tensor.matrix -> [taken from the Gram, matrices]
        for name, (a, b) in matrices:
            core, _ = metrics._svd_core(a, b, torch.float64)
            _, exact = metrics.gram_singular_values(core[None])
            counts = kinds.setdefault(".".join(name.split(".")[1:3]), [0, 0])
            counts[0] += int(exact[0])
            counts[1] += 1
        entry["from_gram"] = {k: f"{a} of {n}" for k, (a, n) in kinds.items()}
        seconds: dict[str, float] = {}
        values: dict[str, list] = {}
        for _ in range(args.repeats):
            for method in args.methods.split(","):
                spent, values[method] = timed(functools.partial(run_method, method, pairs), args.device)
                seconds[method] = min(seconds.get(method, math.inf), spent)
                entry["seconds_per_layer"] = {k: v / args.layers for k, v in seconds.items()}
                layers = SHAPES[label][0]
                entry["seconds_per_checkpoint"] = {k: v / args.layers * layers for k, v in seconds.items()}
                print(json.dumps({label: {method: round(spent, 3)}}), flush=True)
                save(results, args.out)
        shapes = [shape_of(p) for p in pairs]
        entry["errors"] = {
            m: measure_errors(con, shapes, values["svd"], v) for m, v in values.items() if m != "svd"
        }
        print(json.dumps({label: entry}, default=str), flush=True)
        save(results, args.out)
        del matrices, pairs, values


def known(args, con, results: dict) -> None:
    for label in [s for s in args.known_shapes.split(",") if s]:
        d = SHAPES[label][1]
        for rows in (d, 4 * d):
            for k, (name, s) in enumerate(known_spectra(d, seed=d).items()):
                m = with_spectrum(rows, s, seed=rows + k, device=args.device)
                truth = s.to(args.device)
                entry = {}
                for method in args.methods.split(","):
                    spent, (sv,) = timed(functools.partial(run_method, method, [(m, None)]), args.device)
                    entry[method] = {"seconds": spent, **measure_errors(con, [(rows, d)], [truth], [sv])}
                results["known"][f"{label} {rows}x{d} {name}"] = entry
                print(json.dumps({f"{label} {rows}x{d} {name}": entry}), flush=True)
                save(results, args.out)
                del m


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--layers", type=int, default=1, help="blocks per shape (one is a layer's matrices)")
    parser.add_argument("--tokens", type=int, default=4096, help="probe tokens for the gradients")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--known-shapes", default="70m,160m")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (0: torch's)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if not args.methods.startswith("svd"):
        parser.error("--methods must start with svd: the reference the others are checked against")
    import duckdb
    import torch

    from layerlake.warehouse.macros import install_functions

    if args.threads:
        torch.set_num_threads(args.threads)
    con = install_functions(
        duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    )
    device_kind = "cpu" if args.device == "cpu" else torch.cuda.get_device_name(args.device).replace(" ", "-")
    results = {
        "device": args.device, "device_kind": device_kind, "machine": platform.machine(), "cores": os.cpu_count(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "python": sys.version.split()[0],
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_average": os.getloadavg()[0], "layers": args.layers, "tokens": args.tokens,
        "shapes": {}, "known": {},
    }  # fmt: skip
    save(results, args.out)
    known(args, con, results)
    model_shapes(args, con, results)
    results["load_average_end"] = os.getloadavg()[0]
    save(results, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
