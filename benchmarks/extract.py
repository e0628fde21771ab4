"""Extraction benchmark: layerlake's one pass per checkpoint against the way the field does it today.

Baseline (TransformerLens 4): per checkpoint, ``TransformerBridge.boot_transformers(<folder>)`` and
``run_with_cache`` on the probe batch, keeping the cached site activations (and the weights); then,
afterwards, CKA against the final checkpoint and SVDs in numpy.
layerlake: ``run_extract`` with the local executor into a fresh warehouse, then CKA to the final
checkpoint in SQL.

Each side runs in its own child process of this script (so peak RSS is its own), alternately, repeated;
the parent prints the ratio and checks both give the same numbers. ``--shapes 70m,160m`` runs the same
comparison on random-initialised checkpoints of Pythia's shapes instead (``benchmarks/scale.py`` lays
them out as hub revisions of ``suite=pythia``; both sides read the same files), with a probe of
``--n-sequences`` (default 16 there: 2 CPU cores). Usage:
    python benchmarks/extract.py [--repeats 2] [--models embedded-s,embedded-m,embedded-l]
    python benchmarks/extract.py --shapes 70m,160m [--checkpoints 3] [--n-sequences 16]
Needs the `bench` extra (transformer-lens).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


N_SEQUENCES = 128  # the study's n: 128 probe sequences, last token of each
SITES = {"attn_out": "hook_attn_out", "mlp_out": "hook_mlp_out", "resid_post": "hook_resid_post"}


def settings_for(data: Path, models: list[str]):
    from layerlake.conf.compose import compose

    shapes = os.environ.get("LAYERLAKE_BENCH_STEPS")  # set for --shapes: Pythia's shapes from a hub cache
    suite = ["suite=pythia", "suite.keep_downloads=true", f"steps.only=[{shapes}]"] if shapes else []
    return compose(
        [
            *suite,
            f"paths.data={data}",
            f"paths.suites={ROOT / 'data' / 'suites'}",
            f"models=[{','.join(models)}]",
            "progress=false",
            "extract.sites=[attn_out,mlp_out,resid_post]",
            "extract.per_head=false",
            "extract.estimators=[biased]",
            "extract.gradients=false",
            f"probe.n_sequences={os.environ.get('LAYERLAKE_BENCH_N', N_SEQUENCES)}",
        ]
    )


def run_layerlake(data: Path, models: list[str]) -> dict:
    """The real pipeline, then CKA to each model's final checkpoint through SQL."""
    from layerlake import warehouse
    from layerlake.etl.driver import run_extract

    settings = settings_for(data, models)
    start = time.perf_counter()
    report = run_extract(settings)
    extract_s = time.perf_counter() - start
    assert report.ok, report.failed
    con = warehouse.connect(settings.paths.warehouse)
    cka = con.sql(
        """
        with final as (select model, max(step) as step from sketches group by model)
        select s.model, s.step, s.layer, s.site, cka_normed(s.gram, f.gram, s.gram_norm, f.gram_norm) as cka
        from sketches s
        join final using (model)
        join sketches f on f.model = s.model and f.step = final.step and f.layer = s.layer and f.site = s.site
            and f.estimator = s.estimator and f.kernel = s.kernel and f.head is not distinct from s.head
        where s.head is null and s.estimator = 'biased'
        """
    ).fetchall()
    total_s = time.perf_counter() - start
    return {
        "checkpoints": len(report.committed),
        "extract_s": extract_s,
        "total_s": total_s,
        "cka": [[m, st, la, si, v] for m, st, la, si, v in cka],
    }


def linear_cka(x, y) -> float:
    """Kornblith et al. feature-space linear CKA (biased), x: n x d1, y: n x d2."""
    import numpy as np

    x = x - x.mean(0, keepdims=True)
    y = y - y.mean(0, keepdims=True)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def run_baseline(data: Path, models: list[str]) -> dict:
    """TransformerLens 4: cache every checkpoint's activations, then numpy CKA and SVDs afterwards."""
    import numpy as np
    import torch
    from transformer_lens.model_bridge import TransformerBridge

    from layerlake.etl.plan import make_plan

    settings = settings_for(data, models)
    plan = make_plan(settings)
    tokens = torch.tensor(plan.probe.token_ids)
    rows = [seq for seq, _ in plan.probe.positions]
    cols = [pos for _, pos in plan.probe.positions]
    start = time.perf_counter()
    kept: dict = {}  # (model, step) -> {hook name: activations}, as a cache-everything workflow keeps them
    weights: dict = {}
    for task in plan.tasks:
        ref = task.ref
        bridge = TransformerBridge.boot_transformers(checkpoint_folder(ref), device="cpu")
        with torch.no_grad():
            _, cache = bridge.run_with_cache(tokens)
        kept[(ref.model, ref.step)] = {
            k: v.numpy() for k, v in cache.items() if k.split(".")[-1] in SITES.values()
        }
        weights[(ref.model, ref.step)] = {
            k: v.detach().numpy().copy() for k, v in bridge.state_dict().items() if v.ndim == 2
        }
        del bridge, cache
    extract_s = time.perf_counter() - start
    cka = []
    for model in plan.models:
        steps = sorted(step for m, step in kept if m == model)
        final = kept[(model, steps[-1])]
        for step in steps:
            for name, acts in kept[(model, step)].items():
                layer, hook = int(name.split(".")[1]), name.split(".")[-1]
                site = next(s for s, h in SITES.items() if h == hook)
                x, y = acts[rows, cols], final[name][rows, cols]
                np.linalg.svd(x - x.mean(0), compute_uv=False)
                cka.append([model, step, layer, site, linear_cka(x.astype(np.float64), y.astype(np.float64))])
            for matrix in weights[(model, step)].values():
                np.linalg.svd(matrix.astype(np.float64), compute_uv=False)
    total_s = time.perf_counter() - start
    return {"checkpoints": len(plan.tasks), "extract_s": extract_s, "total_s": total_s, "cka": cka}


def checkpoint_folder(ref) -> str:
    """The folder of a checkpoint: a local one as it is, a hub revision's snapshot in the cache."""
    if ref.source != "hf":
        return ref.location
    from huggingface_hub import snapshot_download

    return snapshot_download(ref.location, revision=ref.revision, local_files_only=True)


def child(side: str, models: list[str], out: Path) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        result = (run_layerlake if side == "layerlake" else run_baseline)(Path(tmp), models)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.write_text(json.dumps(result))


def spawn(side: str, models: list[str]) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as handle:
        out = Path(handle.name)
    subprocess.run(
        [sys.executable, __file__, "--child", side, "--models", ",".join(models), "--out", str(out)],
        check=True,
        cwd=ROOT,
    )
    return json.loads(out.read_text())


def compare(a: list, b: list) -> float:
    left = {tuple(r[:4]): r[4] for r in a}
    right = {tuple(r[:4]): r[4] for r in b}
    common = left.keys() & right.keys()
    assert len(common) == len(left) == len(right), (len(common), len(left), len(right))
    return max(abs(left[k] - right[k]) for k in common)


def pythia_shapes(args) -> list[str]:
    """Lay out ``args.shapes``' checkpoints as hub revisions (once) and point the children at them."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import scale

    steps = [scale.STEP_EVERY * (i + 1) for i in range(args.checkpoints)]
    tokenizer = scale.embedded_tokenizer()
    for label in args.shapes.split(","):
        scale.build_hub_checkpoints(args.cache, label, steps, tokenizer)
    os.environ.update(
        HF_HUB_CACHE=str(args.cache),
        LAYERLAKE_BENCH_STEPS=",".join(map(str, steps)),
        LAYERLAKE_BENCH_N=str(args.n_sequences),
    )
    return [f"pythia-{label}" for label in args.shapes.split(",")]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", choices=["layerlake", "baseline"])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--models", default="embedded-s,embedded-m,embedded-l")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--shapes", help="Pythia shapes (70m,160m,410m) instead of the embedded suite")
    parser.add_argument("--checkpoints", type=int, default=3, help="with --shapes: checkpoints per shape")
    parser.add_argument("--n-sequences", type=int, default=16, help="with --shapes: probe sequences")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "layerlake-scale-hub")
    args = parser.parse_args()
    models = args.models.split(",")
    if args.child:
        child(args.child, models, args.out)
        return 0
    if args.shapes:
        models = pythia_shapes(args)
    else:
        from layerlake.conf.compose import compose
        from layerlake.etl.suite.command import build

        build(compose([f"paths.suites={ROOT / 'data' / 'suites'}"]))
    runs = {"layerlake": [], "baseline": []}
    for _ in range(args.repeats):
        for side in ("baseline", "layerlake"):
            runs[side].append(spawn(side, models))
            print(side, {k: v for k, v in runs[side][-1].items() if k != "cka"}, flush=True)
    best = {side: min(r["total_s"] for r in rs) for side, rs in runs.items()}
    peak = {side: max(r["peak_rss_mib"] for r in rs) for side, rs in runs.items()}
    n = runs["layerlake"][0]["checkpoints"]
    diff = compare(runs["layerlake"][0]["cka"], runs["baseline"][0]["cka"])
    print(
        f"\nmachine: {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    print(f"checkpoints: {n} ({','.join(models)}); repeats: {args.repeats} (best of)")
    for side in ("baseline", "layerlake"):
        print(
            f"{side:>10}: {best[side]:.1f} s total, {1000 * best[side] / n:.0f} ms per checkpoint, "
            f"peak RSS {peak[side]:.0f} MiB"
        )
    print(
        f"speed-up: {best['baseline'] / best['layerlake']:.2f}x; peak memory ratio: "
        f"{peak['layerlake'] / peak['baseline']:.2f}; max |CKA difference|: {diff:.2e}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
