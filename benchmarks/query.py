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

and, in the same run, the scan limit the SQL is held against: reading the same Gram bytes (the ``gram``
column chunks of the files the view reads) from the page cache, plus the float64 dot products in numpy
on arrays already in memory. It prints SQL / limit (goal <= 2), the largest difference of the SQL's CKA
from float64 numpy (goal <= 1e-6), and with ``--scaling`` how storage and query time grow with the probe
size n = 128 ... 1024 (on a smaller warehouse, the same one for every n: ``--scaling-models`` and the 27
paper checkpoints).

Run: ``.venv/bin/python benchmarks/query.py`` (full size, a few minutes) or ``--small``; ``--reuse`` with
``--root`` times a warehouse built before (``layerlake compact`` it first, as the results were).
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


def sql_cka_on(con, ref: int) -> pa.Table:
    """The headline query on an open connection (the query alone, no connect)."""
    from layerlake.warehouse.macros import staging_values

    with staging_values(con, {"reference_step": ref}):
        return con.sql(CKA_SQL).to_arrow_table()


def gram_chunk_ranges(files: list[str]) -> list[tuple[str, int, int]]:
    """(file, offset, length) of every ``gram`` column chunk: the Gram bytes a scan must read."""
    ranges = []
    for path in files:
        meta = pq.ParquetFile(path).metadata
        index = meta.schema.to_arrow_schema().names.index("gram")
        for g in range(meta.num_row_groups):
            chunk = meta.row_group(g).column(index)
            start = chunk.dictionary_page_offset or chunk.data_page_offset
            ranges.append((path, start, chunk.total_compressed_size))
    return ranges


def read_gram_bytes(ranges: list[tuple[str, int, int]]) -> int:
    """Read every Gram column chunk's bytes (from the page cache once warm) into one reused buffer, so
    only the copy out of the cache is timed; returns the bytes read."""
    buffer = memoryview(bytearray(max(length for _, _, length in ranges)))
    total = 0
    for path, start, length in ranges:
        with open(path, "rb", buffering=0) as f:
            f.seek(start)
            total += f.readinto(buffer[:length])
    return total


def grams_in_memory(files: list[str], ref: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
    """Every Gram as one float32 array (rows x values), the row of each one's reference Gram, the stored
    norms, and the keys (model, layer, site, step) in row order."""
    table = pa.concat_tables(
        pq.read_table(f, columns=["model", "layer", "site", "step", "gram", "gram_norm"]) for f in files
    )
    gram = table.column("gram").combine_chunks()
    if pa.types.is_list(gram.type):  # an older warehouse (schema 2): a list of floats
        g = gram.values.to_numpy().reshape(len(gram), -1)
    else:  # the stored bytes: one buffer, read without a copy
        g = np.frombuffer(gram.buffers()[2], dtype="<f4").reshape(len(gram), -1)
    keys = tuple(zip(*(table.column(c).to_pylist() for c in ("model", "layer", "site", "step")), strict=True))
    ref_row = {k[:3]: i for i, k in enumerate(keys) if k[3] == ref}
    idx = np.array([ref_row[k[:3]] for k in keys])
    return g, idx, table.column("gram_norm").to_numpy(), keys


def numpy_dots(g: np.ndarray, idx: np.ndarray, block: int = 1024) -> np.ndarray:
    """<G_i, G_ref(i)> for every row, float32 values multiplied and summed in float64, a block of rows
    at a time (so the float64 temporaries stay in cache: about twice as fast as one call over all)."""
    out = np.empty(len(g))
    for start in range(0, len(g), block):
        rows = slice(start, start + block)
        out[rows] = np.einsum("ij,ij->i", g[rows], g[idx[rows]], dtype=np.float64)
    return out


def float64_cka(g: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The reference values: every Gram in float64, norms from the values themselves (not stored)."""
    dots = numpy_dots(g, idx)
    norms = np.sqrt(numpy_dots(g, np.arange(len(g))))
    return dots / (norms * norms[idx])


def scan_limit(root: Path, ref: int, repeat: int) -> dict:
    """The limit for the headline query on this machine, now: read the Gram bytes + numpy dot products."""
    files = sorted(table_files(root, "sketches"))
    ranges = gram_chunk_ranges(files)
    read_gram_bytes(ranges)  # warm the page cache
    read_s, nbytes = best_of(lambda: read_gram_bytes(ranges), repeat)
    g, idx, _, keys = grams_in_memory(files, ref)
    dots_s, _ = best_of(lambda: numpy_dots(g, idx), repeat)
    want = dict(zip(keys, float64_cka(g, idx), strict=True))
    return {"read_s": read_s, "bytes": nbytes, "dots_s": dots_s, "limit_s": read_s + dots_s, "want": want}


def max_difference(sql_out: pa.Table, want: dict) -> float:
    got = zip(
        *(sql_out.column(c).to_pylist() for c in ("model", "layer", "site", "step", "cka")), strict=True
    )
    diffs = [abs(cka - want[(m, layer, site, step)]) for m, layer, site, step, cka in got]
    assert len(diffs) == len(want), "SQL and numpy return different rows"
    return max(diffs)


def limit_report(root: Path, ref: int, repeat: int = 5) -> dict:
    """SQL (connect + query, and the query alone) against the scan limit, side by side, best of ``repeat``."""
    from layerlake import warehouse

    limit = scan_limit(root, ref, repeat)
    sql_s, sql_out = best_of(lambda: sql_cka(root, None, ref), repeat)
    con = warehouse.connect(root)
    query_s, _ = best_of(lambda: sql_cka_on(con, ref), repeat)
    con.close()
    return {**limit, "sql_s": sql_s, "query_s": query_s, "rows": sql_out.num_rows,
            "max_diff": max_difference(sql_out, limit.pop("want"))}  # fmt: skip


def print_limit(r: dict) -> None:
    print(
        f"scan limit: read the Gram bytes {r['read_s']:.2f} s ({r['bytes'] / 1e6:,.0f} MB from the page cache) "
        f"+ numpy dot products on arrays in memory {r['dots_s']:.2f} s = {r['limit_s']:.2f} s"
    )
    print(
        f"SQL: connect + query {r['sql_s']:.2f} s (query alone {r['query_s']:.2f} s); "
        f"SQL / limit = {r['sql_s'] / r['limit_s']:.2f} (query alone {r['query_s'] / r['limit_s']:.2f}; goal <= 2)"
    )
    print(
        f"exactness: max |SQL - float64 numpy| over {r['rows']} CKA values = {r['max_diff']:.1e} (goal <= 1e-6)"
    )
    assert r["max_diff"] <= 1e-6, "the SQL's CKA is not exact to 1e-6"


def scaling(base: Path, models: dict, ns: list[int], repeat: int) -> list[dict]:
    """Storage and query time against the probe size n, one fresh warehouse per n (same models, the 27
    paper checkpoints)."""
    rows = []
    for n in ns:
        root = base / f"n{n}"
        built = build(root, models, PAPER_STEPS, n, 64)
        r = limit_report(root, PAPER_STEPS[-1], repeat)
        rows.append({"n": n, "grams": r["rows"], "sketch_bytes": built["bytes"]["sketches"], **r})
        shutil.rmtree(root, ignore_errors=True)
    return rows


def print_scaling(rows: list[dict]) -> None:
    print(
        "| n | Grams | sketches on disk | per Gram | SQL (connect + query) | query alone | limit | SQL / limit | max diff |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['n']} | {r['grams']:,} | {r['sketch_bytes'] / 1e6:,.1f} MB | {r['sketch_bytes'] / r['grams'] / 1e3:,.1f} kB "
            f"| {r['sql_s']:.2f} s | {r['query_s']:.2f} s | {r['limit_s']:.2f} s | {r['sql_s'] / r['limit_s']:.2f} "
            f"| {r['max_diff']:.1e} |"
        )


def numpy_cka(root: Path, steps: list[int], ref: int) -> pa.Table:
    """Read Grams with pyarrow; CKA = <A, B> / (|A| |B|) per (model, layer, site) against the ref step."""
    import pyarrow.compute as pc

    columns = ["model", "layer", "site", "step", "gram", "gram_norm"]
    table = pa.concat_tables(pq.read_table(f, columns=columns) for f in table_files(root, "sketches"))
    table = table.filter(pc.is_in(table.column("step"), pa.array(steps, pa.int64())))
    gram = table.column("gram").combine_chunks()
    g = np.frombuffer(gram.buffers()[2], dtype="<f4").reshape(len(gram), -1)  # the stored bytes, no copy
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
    parser.add_argument(
        "--reuse", action="store_true", help="time the warehouse at --root as it is (no build)"
    )
    parser.add_argument("--repeat", type=int, default=5, help="best of this many runs for the limit and SQL")
    parser.add_argument("--scaling", action="store_true", help="also the n = 128 ... 1024 table")
    parser.add_argument("--scaling-models", default="70m,160m", help="models of the scaling warehouses")
    parser.add_argument("--scaling-n", default="128,256,512,1024")
    parser.add_argument("--no-mlflow", action="store_true", help="skip the MLflow part")
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
        if args.scaling:
            chosen = {k: MODELS[k] for k in args.scaling_models.split(",")}
            print(f"\nscaling with n: models {', '.join(chosen)}, the {len(PAPER_STEPS)} paper checkpoints")
            ns = [int(n) for n in args.scaling_n.split(",")]
            print_scaling(scaling(Path(tmp), chosen, ns, args.repeat))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def table_files(root: Path, table: str) -> list[str]:
    """The files of ``table`` the views read (the manifest's listing)."""
    from layerlake import warehouse

    con = warehouse.connect(root)
    files = [
        r[0]
        for r in con.sql("select distinct path from manifest where table_name = ?", params=[table]).fetchall()
    ]
    con.close()
    return files


def report(root: Path, models: dict, steps: list[int], args) -> None:
    import duckdb

    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, python {platform.python_version()}, "
          f"duckdb {duckdb.__version__}, pyarrow {pa.__version__}, numpy {np.__version__}")  # fmt: skip
    if args.reuse:
        sizes = {
            t: sum(p.stat().st_size for p in map(Path, table_files(root, t))) for t in ("sketches", "spectra")
        }
        print(f"reusing {root}; bytes the views read: {sizes}")
    else:
        built = build(root, models, steps, args.n, 256 if args.small else None)
        print(f"built {built['tasks']} tasks in {built['build_s']:.1f} s; bytes on disk: {built['bytes']}")
    ref = steps[-1]
    print_limit(limit_report(root, ref, args.repeat))
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
    ml = None if args.no_mlflow else run_mlflow(sql_out, args.mlflow_python)
    if ml is None:
        print("(c) MLflow: skipped (--no-mlflow, or mlflow not importable: pass --mlflow-python)")
    else:
        print(
            f"(c) MLflow sqlite: log {ml['log_s']:.1f} s, read back {ml['rows']} values in {ml['query_s']:.2f} s "
            f"(MLflow/SQL = {ml['query_s'] / sql_s:.1f}x), db {ml['bytes']} bytes"
        )


if __name__ == "__main__":
    main()
