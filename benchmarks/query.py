"""Query benchmark: "CKA to the final checkpoint for every (model, layer, site, step)", three ways.

Builds, through the real ``Warehouse.commit``, a warehouse shaped like the paper's study (the five
deduped Pythia models with their real layer counts and widths, all 154 checkpoints, attention and MLP
sites as n = 128 centred Grams, plus weight spectra), then times:

(a) SQL through ``warehouse.connect``: the staging view ``cka_to_reference`` the recipes read
    (``warehouse/sql/staging/cka_to_reference.sql``, ``cka_normed`` on the stored Gram norms);
(b) numpy on the Gram arrays read with pyarrow;
(c) MLflow (sqlite backend): the same per-layer CKA values logged as metrics, then read back.
    MLflow is a benchmark-only dependency. If ``import mlflow`` fails here, the MLflow part runs in
    ``--mlflow-python`` (an interpreter that has it), or is skipped.

Run: ``.venv/bin/python benchmarks/query.py`` (full size, a few minutes) or ``--small``.
The Grams are random but structured (a shared low-rank factor per layer plus noise that shrinks
towards the final step), so CKA values are spread between 0 and 1 like real ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the warehouse package, imported lazily: the MLflow worker has no duckdb

MODELS = {"70m": (6, 512), "160m": (12, 768), "410m": (24, 1024), "1.4b": (24, 2048), "2.8b": (32, 2560)}
PYTHIA_STEPS = [0] + [2**i for i in range(10)] + list(range(1000, 143001, 1000))  # 154
PAPER_STEPS = [0] + [2**i for i in range(10)] + [1000] + list(range(3000, 143001, 10000))  # 27
SITES = ("attn_out", "mlp_out")
# The one CKA-to-reference query (the staging view the recipes use), with the reference bound.
CKA_SQL = "select model, layer, site, step, cka from cka_to_reference"
CKA_SUBSET_SQL = CKA_SQL + " where list_contains($steps, step)"
RANK = 16  # rank of the shared factor behind each layer's Grams


def centred(f: np.ndarray) -> np.ndarray:
    """H F F^T H for a batch of factors f (..., n, r): centre the rows of F, then F F^T."""
    f = f - f.mean(axis=-2, keepdims=True)
    return f @ np.swapaxes(f, -1, -2)


def build(root: Path, models: dict, steps: list[int], n: int, spectrum_len: int | None) -> dict:
    """Commit one task per (model, step); returns sizes and timings."""
    from layerlake.warehouse.synthetic import checkpoint_tables
    from layerlake.warehouse.writer import Warehouse

    w = Warehouse(root)
    rng = np.random.default_rng(0)
    final = steps[-1]
    t0 = time.perf_counter()
    for model, (layers, d) in models.items():
        base = rng.normal(size=(layers, len(SITES), n, RANK))
        for step in steps:
            noise = 0.2 + 2.0 * (1 - step / final) ** 2
            grams = centred(base + noise * rng.normal(size=base.shape)).astype(np.float32)
            gram = {(layer, site): grams[layer, j] for layer in range(layers) for j, site in enumerate(SITES)}
            k = spectrum_len or d
            spec = {
                (layer, m): np.sort(rng.gamma(2.0, 1.0, size=k))[::-1]
                for layer in range(layers)
                for m in ("dense", "dense_4h_to_h")
            }
            w.commit(
                f"{model}-{step}",
                "pythia",
                model,
                checkpoint_tables(model, step, gram, spec, d=d),
                {"step": step},
            )
    seconds = time.perf_counter() - t0
    sizes = {t: sum(p.stat().st_size for p in (root / t).rglob("*.parquet")) for t in ("sketches", "spectra")}
    return {"build_s": seconds, "bytes": sizes, "tasks": len(models) * len(steps)}


def best_of(fn, repeat: int = 3):
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def sql_cka(root: Path, steps: list[int] | None, ref: int) -> pa.Table:
    """CKA to ``ref`` for ``steps`` (None: every stored step) through the ``cka_to_reference`` view."""
    from layerlake import warehouse
    from layerlake.warehouse.macros import staging_values

    con = warehouse.connect(root)
    with staging_values(con, {"reference_step": ref}):
        if steps is None:
            out = con.sql(CKA_SQL).to_arrow_table()
        else:
            out = con.sql(CKA_SUBSET_SQL, params={"steps": steps}).to_arrow_table()
    con.close()
    return out


def numpy_cka(root: Path, steps: list[int], ref: int) -> pa.Table:
    """Read Grams with pyarrow; CKA = <A, B> / (|A| |B|) per (model, layer, site) against the ref step."""
    import pyarrow.dataset as ds

    dataset = ds.dataset(root / "sketches", format="parquet", partitioning="hive")
    table = dataset.to_table(
        columns=["model", "layer", "site", "step", "gram", "gram_norm"], filter=ds.field("step").isin(steps)
    )
    gram = table.column("gram").combine_chunks()
    n2 = len(gram.values) // len(gram)
    g = gram.values.to_numpy().reshape(len(gram), n2)
    norm = table.column("gram_norm").to_numpy()
    keys = list(
        zip(
            table.column("model").to_pylist(),
            table.column("layer").to_pylist(),
            table.column("site").to_pylist(),
            strict=True,
        )
    )
    step = table.column("step").to_numpy()
    ref_row = {key: i for i, (key, s) in enumerate(zip(keys, step, strict=True)) if s == ref}
    idx = np.array([ref_row[k] for k in keys])
    dots = np.einsum("ij,ij->i", g, g[idx], dtype=np.float64)
    cka = dots / (norm * norm[idx])
    return pa.table(
        {
            "model": [k[0] for k in keys],
            "layer": [k[1] for k in keys],
            "site": [k[2] for k in keys],
            "step": step,
            "cka": cka,
        }
    )


def mlflow_part(values_path: Path, workdir: Path) -> dict:
    """Log the CKA values to MLflow (sqlite) as metric histories, then read them all back."""
    import logging

    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    table = pq.read_table(values_path).to_pylist()
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.create_experiment("cka", artifact_location=str(workdir / "artifacts"))
    t0 = time.perf_counter()
    runs = {}
    by_model: dict[str, list] = {}
    for r in table:
        by_model.setdefault(r["model"], []).append(r)
    for model, rows in by_model.items():
        runs[model] = client.create_run(exp, run_name=model).info.run_id
        metrics = [Metric(f"cka.{r['site']}.layer{r['layer']:02d}", r["cka"], 0, r["step"]) for r in rows]
        for i in range(0, len(metrics), 1000):
            client.log_batch(runs[model], metrics=metrics[i : i + 1000])
    log_s = time.perf_counter() - t0

    def read_back():
        got = 0
        for run in client.search_runs([exp]):
            for key in run.data.metrics:
                got += len(client.get_metric_history(run.info.run_id, key))
        return got

    query_s, got = best_of(read_back, repeat=2)
    db = workdir / "mlflow.db"
    return {"log_s": log_s, "query_s": query_s, "rows": got, "bytes": db.stat().st_size}


def run_mlflow(values: pa.Table, mlflow_python: str | None) -> dict | None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "values.parquet"
        pq.write_table(values, path)
        try:
            import mlflow  # noqa: F401

            return mlflow_part(path, Path(tmp))
        except ImportError:
            if not mlflow_python:
                return None
        out = subprocess.run(
            [mlflow_python, __file__, "--mlflow-worker", str(path), tmp],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="two models, 27 steps: a quick check")
    parser.add_argument("--root", help="build the warehouse here (kept); default a temporary folder")
    parser.add_argument("--n", type=int, default=128, help="probe rows per Gram")
    parser.add_argument("--mlflow-python", default=os.environ.get("LAYERLAKE_MLFLOW_PYTHON"))
    parser.add_argument("--mlflow-worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mlflow_worker:
        print(json.dumps(mlflow_part(Path(args.mlflow_worker[0]), Path(args.mlflow_worker[1]))))
        return
    models = {k: MODELS[k] for k in ("70m", "160m")} if args.small else MODELS
    steps = PAPER_STEPS if args.small else PYTHIA_STEPS
    tmp = tempfile.mkdtemp(prefix="layerlake-bench-")
    root = Path(args.root) if args.root else Path(tmp) / "warehouse"
    try:
        report(root, models, steps, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(root: Path, models: dict, steps: list[int], args) -> None:
    built = build(root, models, steps, args.n, 256 if args.small else None)
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}")
    print(f"built {built['tasks']} tasks in {built['build_s']:.1f} s; bytes on disk: {built['bytes']}")
    ref = steps[-1]
    sql_s, sql_out = best_of(lambda: sql_cka(root, None, ref))  # every step: no step filter
    np_s, np_out = best_of(lambda: numpy_cka(root, steps, ref))
    a = sorted(
        zip(*(sql_out.column(c).to_pylist() for c in ("model", "layer", "site", "step", "cka")), strict=True)
    )
    b = sorted(
        zip(*(np_out.column(c).to_pylist() for c in ("model", "layer", "site", "step", "cka")), strict=True)
    )
    assert len(a) == len(b) and np.allclose([x[4] for x in a], [x[4] for x in b], rtol=1e-5), (
        "SQL and numpy disagree"
    )
    print(f"rows: {sql_out.num_rows}")
    print(f"(a) SQL cka_to_reference: {sql_s:.2f} s")
    print(f"(b) numpy+pyarrow:  {np_s:.2f} s   SQL/numpy = {sql_s / np_s:.2f}")
    for subset in ([s for s in PAPER_STEPS if s in steps], steps[::2] + [ref], steps):
        sub = sorted(set(subset))
        t, out = best_of(lambda sub=sub: sql_cka(root, None if sub == steps else sub, ref))
        print(f"    SQL over {len(sub):3d} checkpoints: {t:.2f} s ({out.num_rows} rows)")
    ml = run_mlflow(sql_out, args.mlflow_python)
    if ml is None:
        print("(c) MLflow: skipped (mlflow not importable; pass --mlflow-python)")
    else:
        print(
            f"(c) MLflow sqlite: log {ml['log_s']:.1f} s, read back {ml['rows']} values in {ml['query_s']:.2f} s "
            f"(MLflow/SQL = {ml['query_s'] / sql_s:.1f}x), db {ml['bytes']} bytes"
        )


if __name__ == "__main__":
    main()
