"""Extraction at Pythia's shapes: layerlake's time per checkpoint against the bare minimum, per phase.

Random-initialised GPT-NeoX checkpoints of the Pythia-70m, -160m and -410m shapes are laid out as a hub
cache (content-addressed blobs, ``snapshots/<commit>``, ``refs/step<N>``) under the repo names of
``conf/suite/pythia.yaml``, so layerlake loads them through its hub code path with ``HF_HUB_OFFLINE=1``.

- **layerlake**: ``run_extract`` on ``suite=pythia`` (local executor, gradients on, every site, both
  estimators) into a fresh warehouse; time per checkpoint = the whole run's wall time / checkpoints,
  split per phase from the timings each task commits (the rest is the driver: plan, probe, writes).
- **bare**: the same outputs' unavoidable work, written plainly in this file: ``from_pretrained`` of
  the same files, one forward with hooks reading the three sites at the probe positions, the backward
  of the same loss, and every singular value layerlake stores (weights and gradients: the fused and
  split Q, K, V, the dense and MLP matrices, the per-layer OV product, each head's OV from its factors,
  and the centred activations), one ``torch.linalg.svdvals`` call each, in float64, on the tall side.

Both run alternately in this process, repeated; the overhead ratio is best layerlake / best bare.
``--precision`` also measures ``extract.spectra_precision=float32`` against float64 on the weights of
one checkpoint per shape: the SVD speed ratio and the largest relative error of erank (PER is
erank / k), stable rank and the power-law alphas, computed by the warehouse's own SQL macros.

Usage:
    python benchmarks/scale.py [--shapes 70m,160m,410m] [--checkpoints 2] [--repeats 2] [--precision]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {"70m": (6, 512, 8), "160m": (12, 768, 12), "410m": (24, 1024, 16)}  # layers, d_model, heads
VOCAB = 50304
PROBE = ("probe.n_sequences=8", "probe.seq_len=64")  # 8 sequences x 64 tokens: n = 8 probe rows
STEP_EVERY = 1000  # fake steps 1000, 2000, ... (in pythia.yaml's schedule)


# --- checkpoints --------------------------------------------------------------------------------


def neox_config(label: str):
    from transformers import GPTNeoXConfig

    layers, d_model, heads = SHAPES[label]
    config = GPTNeoXConfig(
        vocab_size=VOCAB,
        hidden_size=d_model,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=4 * d_model,
        max_position_embeddings=2048,
        use_parallel_residual=True,
        tie_word_embeddings=False,
    )
    config.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}
    return config


def build_hub_checkpoints(cache: Path, label: str, steps: list[int], tokenizer: Path) -> str:
    """Random checkpoints of ``label``'s shape (seed = step) as hub revisions ``step<N>`` of
    EleutherAI/pythia-<label>; returns the repo id. Kept between runs (built once)."""
    import torch
    from transformers import GPTNeoXForCausalLM

    repo_id = f"EleutherAI/pythia-{label}"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for step in steps:
        commit = hashlib.sha1(f"{label}-step{step}".encode()).hexdigest()
        snapshot = repo / "snapshots" / commit
        if (repo / "refs" / f"step{step}").is_file():
            (repo / "refs" / "main").write_text((repo / "refs" / f"step{step}").read_text())
            continue
        with tempfile.TemporaryDirectory() as tmp:
            torch.manual_seed(step)
            GPTNeoXForCausalLM(neox_config(label)).save_pretrained(tmp, safe_serialization=True)
            shutil.copy(tokenizer, Path(tmp) / "tokenizer.json")
            snapshot.mkdir(parents=True, exist_ok=True)
            for file in sorted(Path(tmp).iterdir()):
                blob = repo / "blobs" / sha256_of(file)
                blob.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(file, blob)
                (snapshot / file.name).symlink_to(Path("../../blobs") / blob.name)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / f"step{step}").write_text(commit)
        (repo / "refs" / "main").write_text(commit)  # the tokenizer is read from main
    return repo_id


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def embedded_tokenizer() -> Path:
    """The embedded suite's tokenizer (built offline by ``layerlake suite build`` if missing)."""
    from layerlake.conf.compose import compose
    from layerlake.etl.suite.command import build

    settings = compose([f"paths.suites={ROOT / 'data' / 'suites'}"])
    path = Path(settings.paths.suites) / settings.suite.name / "tokenizer.json"
    if not path.is_file():
        build(settings)
    return path


# --- layerlake --------------------------------------------------------------------------------------


def settings_for(data: Path, label: str, steps: list[int], extra: tuple[str, ...] = ()):
    from layerlake.conf.compose import compose

    return compose(
        [
            "suite=pythia",
            f"paths.data={data}",
            f"models=[pythia-{label}]",
            f"steps.only=[{','.join(map(str, steps))}]",
            "suite.keep_downloads=true",
            "executor=local",
            "executor.torch_threads=2",
            "progress=false",
            *PROBE,
            *extra,
        ]
    )


def run_layerlake(label: str, steps: list[int]) -> dict:
    """One extraction run into a fresh warehouse: wall seconds per checkpoint and the mean phases."""
    from layerlake.etl.driver import run_extract
    from layerlake.etl.worker import process_weight_spectra
    from layerlake.warehouse.writer import Warehouse

    process_weight_spectra().entries.clear()  # a repeat must not reuse the last run's weight spectra
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_for(Path(tmp), label, steps)
        start = time.perf_counter()
        report = run_extract(settings)
        wall = time.perf_counter() - start
        assert report.ok and len(report.committed) == len(steps), report.failed
        entries = [
            e for e in Warehouse(settings.paths.warehouse).committed().values() if e.meta.get("timings")
        ]
        timings = [e.meta["timings"] for e in entries]
    phases = {k: sum(t.get(k, 0.0) for t in timings) / len(steps) for k in timings[0]}
    phases["driver"] = wall / len(steps) - phases["total"]  # plan, probe, commits (writes), run rows
    return {"per_checkpoint": wall / len(steps), "phases": phases}


# --- the bare minimum -----------------------------------------------------------------------------


def bare_checkpoint(folder: Path, ids, positions, device: str = "cpu", batch_size: int | None = None) -> dict:
    """The same outputs' unavoidable work on one checkpoint, timed per phase: ``batch_size`` sequences
    per forward and backward (gradients add up over the chunks), as ``extract.batch_size`` does."""
    import torch
    from transformers import GPTNeoXForCausalLM

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)

    times = dict.fromkeys(("load", "svd", "forward", "backward"), 0.0)
    start = time.perf_counter()
    model = GPTNeoXForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device)
    sync()
    times["load"] = time.perf_counter() - start

    start = time.perf_counter()
    sv = [svd(m) for m in weight_matrices(model, tensor="weight")]
    sync()
    times["svd"] = time.perf_counter() - start

    ids, positions = ids.to(device), positions.to(device)
    step = batch_size or ids.shape[0]
    captured: dict[int, list] = {}  # hook number -> rows of each chunk
    for first in range(0, ids.shape[0], step):
        chunk = ids[first : first + step]
        mine = positions[(positions[:, 0] >= first) & (positions[:, 0] < first + step)]
        rows, cols = mine[:, 0] - first, mine[:, 1]
        start = time.perf_counter()
        modules = [m for layer in model.gpt_neox.layers for m in (layer.attention, layer.mlp, layer)]
        hooks = [m.register_forward_hook(reader(captured, key, rows, cols)) for key, m in enumerate(modules)]
        logits = model(chunk).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum"
        )
        for hook in hooks:
            hook.remove()
        sync()
        times["forward"] += time.perf_counter() - start
        start = time.perf_counter()
        loss.backward()
        del logits, loss
        sync()
        times["backward"] += time.perf_counter() - start

    start = time.perf_counter()
    sv += [svd(m) for m in weight_matrices(model, tensor="grad")]
    for parts in captured.values():
        x = torch.cat(parts).detach().double()
        sv.append(svd(x - x.mean(0)))
    sync()
    times["svd"] += time.perf_counter() - start
    times["total"] = sum(times.values())
    times["values"] = sum(len(s) for s in sv)
    return times


def reader(captured: dict, key: int, rows, cols):
    """A forward hook keeping a module's output rows at the probe positions under ``captured[key]``."""

    def keep(_module, _inputs, out):
        captured.setdefault(key, []).append((out[0] if isinstance(out, tuple) else out)[rows, cols])

    return keep


def svd(m):
    import torch

    m = m.detach().double()
    return torch.linalg.svdvals(m.T if m.shape[0] < m.shape[1] else m)


def weight_matrices(model, tensor: str) -> list:
    """Every matrix whose singular values layerlake stores, as the matrix itself or (per-head OV) the
    small core with its nonzero singular values."""
    import torch

    config = model.config
    heads, d = config.num_attention_heads, config.hidden_size
    dh = d // heads
    out = []
    for layer in model.gpt_neox.layers:
        att, mlp = layer.attention, layer.mlp

        def read(linear):
            return linear.weight if tensor == "weight" else linear.weight.grad

        qkv = read(att.query_key_value).view(heads, 3, dh, d)  # rows: [q0 k0 v0 q1 ...]
        q, k, v = (qkv[:, i].reshape(d, d) for i in range(3))
        out += [
            read(att.query_key_value),
            q,
            k,
            v,
            read(att.dense),
            read(mlp.dense_h_to_4h),
            read(mlp.dense_4h_to_h),
        ]
        w_v = att.query_key_value.weight.view(heads, 3, dh, d)[:, 2].reshape(d, d).double()
        w_o = att.dense.weight.double()
        if tensor == "weight":
            out.append(w_o @ w_v)
            factors = [(w_o[:, h * dh : (h + 1) * dh], w_v[h * dh : (h + 1) * dh]) for h in range(heads)]
        else:
            g_v, g_o = v.double(), att.dense.weight.grad.double()
            out.append(g_o @ w_v + w_o @ g_v)
            factors = [
                (
                    torch.cat([g_o[:, h * dh : (h + 1) * dh], w_o[:, h * dh : (h + 1) * dh]], dim=1),
                    torch.cat([w_v[h * dh : (h + 1) * dh], g_v[h * dh : (h + 1) * dh]], dim=0),
                )
                for h in range(heads)
            ]
        for a, b in factors:
            _, ra = torch.linalg.qr(a)
            _, rb = torch.linalg.qr(b.T)
            out.append(ra @ rb.T)
    return out


def run_bare(cache: Path, repo_id: str, steps: list[int], probe) -> dict:
    import torch

    ids = torch.tensor(probe.token_ids, dtype=torch.long)
    positions = torch.tensor(probe.positions, dtype=torch.long)
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    start = time.perf_counter()
    runs = []
    for step in steps:
        commit = (repo / "refs" / f"step{step}").read_text()
        runs.append(bare_checkpoint(repo / "snapshots" / commit, ids, positions))
    wall = time.perf_counter() - start
    phases = {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}
    return {"per_checkpoint": wall / len(steps), "phases": phases}


# --- float32 spectra ---------------------------------------------------------------------------------


def precision_check(cache: Path, repo_id: str, step: int) -> dict:
    """float32 against float64 singular values of one checkpoint's weights: speed and measure errors."""
    import duckdb
    import pyarrow as pa
    import torch

    from layerlake.etl import layouts, metrics, sites
    from layerlake.warehouse.macros import install_functions

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = (repo / "refs" / f"step{step}").read_text()
    from transformers import GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM.from_pretrained(repo / "snapshots" / commit, dtype=torch.float32)
    fitted = layouts.fit(model)
    matrices = [
        factors
        for block in fitted.blocks
        for factors in sites.block_matrices(block, fitted.layout, fitted.shape, "true_v", "weight").values()
    ]
    seconds = {}
    values = {}
    for name, dtype in (("float64", torch.float64), ("float32", torch.float32)):
        best = float("inf")
        for _ in range(2):
            start = time.perf_counter()
            values[name] = metrics.batched_svdvals(matrices, dtype=dtype)
            best = min(best, time.perf_counter() - start)
        seconds[name] = best
    table = pa.table(
        {
            "i": list(range(len(matrices))),
            "sv64": [v.numpy() for v in values["float64"]],
            "sv32": [v.numpy() for v in values["float32"]],
        }
    )
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    install_functions(con)
    con.register("spectra", table)
    errors = {}
    for measure in ("erank", "stable_rank", "powerlaw_alpha"):
        (worst,) = con.sql(
            f"select max(abs({measure}(sv32) - {measure}(sv64)) / abs({measure}(sv64))) from spectra"
        ).fetchall()[0]
        errors[measure] = worst
    errors["ww_alpha"] = max(
        relative_error(ww_alpha(a), ww_alpha(b))
        for a, b in zip(values["float32"], values["float64"], strict=True)
    )
    con.close()
    return {"matrices": len(matrices), "seconds": seconds, "relative_error": errors}


def ww_alpha(sv) -> float:
    """WeightWatcher's alpha (its KS-chosen x_min), from the weightwatcher package: equal to the warehouse's
    ``ww_alpha`` macro to 1e-12 (tests/test_macros.py), which searches x_min in SQL in O(m^2) per
    spectrum, minutes at Pythia's widths."""
    from weightwatcher.WW_powerlaw import WWFit

    evals = sv.numpy() ** 2
    return WWFit(evals[evals > 1e-5]).alpha


def relative_error(got: float, want: float) -> float:
    return abs(got - want) / abs(want)


# --- main -----------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shapes", default="70m,160m,410m")
    parser.add_argument("--checkpoints", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "layerlake-scale-hub")
    parser.add_argument("--precision", action="store_true", help="also float32 against float64 spectra")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    os.environ["HF_HUB_CACHE"] = str(args.cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers.utils import logging as hf_logging

    from layerlake.etl.plan import make_plan

    hf_logging.disable_progress_bar()
    torch.set_num_threads(2)
    tokenizer = embedded_tokenizer()
    steps = [STEP_EVERY * (i + 1) for i in range(args.checkpoints)]
    results = {}
    for label in args.shapes.split(","):
        repo_id = build_hub_checkpoints(args.cache, label, steps, tokenizer)
        probe = make_plan(settings_for(Path(tempfile.gettempdir()) / "unused", label, steps)).probe
        sides = {"bare": [], "layerlake": []}
        for _ in range(args.repeats):
            sides["bare"].append(run_bare(args.cache, repo_id, steps, probe))
            sides["layerlake"].append(run_layerlake(label, steps))
            print(label, {s: round(r[-1]["per_checkpoint"], 2) for s, r in sides.items()}, flush=True)
        best = {s: min(r, key=lambda x: x["per_checkpoint"]) for s, r in sides.items()}
        results[label] = {
            "ratio": best["layerlake"]["per_checkpoint"] / best["bare"]["per_checkpoint"],
            **{s: dataclasses.asdict(Summary(**b)) for s, b in best.items()},
        }
        if args.precision and label != "70m":
            results[label]["precision"] = precision_check(args.cache, repo_id, steps[0])
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(
        f"probe: 8 sequences x 64 tokens (n = 8), gradients on; {args.checkpoints} checkpoints x {args.repeats}"
    )
    for label, r in results.items():
        print(f"\n{label}: overhead ratio {r['ratio']:.3f} (layerlake {r['layerlake']['per_checkpoint']:.2f} s "
              f"/ bare {r['bare']['per_checkpoint']:.2f} s per checkpoint)")  # fmt: skip
        for side in ("bare", "layerlake"):
            phases = ", ".join(f"{k} {v:.2f}" for k, v in r[side]["phases"].items() if k != "values")
            print(f"  {side:>9}: {phases}")
        if "precision" in r:
            p = r["precision"]
            errors = ", ".join(f"{k} {v:.1e}" for k, v in p["relative_error"].items())
            print(f"  float32 spectra: {p['seconds']['float64'] / p['seconds']['float32']:.2f}x faster "
                  f"({p['matrices']} weight matrices); max relative error: {errors}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


@dataclasses.dataclass
class Summary:
    per_checkpoint: float
    phases: dict


if __name__ == "__main__":
    sys.exit(main())
