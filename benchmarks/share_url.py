"""Share by URL: bytes a query reads from an export served over HTTP, against the export's size.

Builds a warehouse of five models of equal shape (``--steps`` checkpoints each, ``--layers`` layers x two
sites, whole-layer and ``--heads`` per-head Gram sketches of ``--n`` probe rows, weight spectra of
``--d`` values), exports it (``layerlake share export``), serves the export from a local HTTP server on
127.0.0.1 that counts the body bytes it sends (``tests/share_http.py``), and for each query opens a fresh
``warehouse.connect(attach=[URL])`` (so nothing is cached) and reports the bytes served for the connect
plus the query (manifest included), as a share of the export's bytes. Queries: ``count(*)`` of every
table; the convergence recipe (CKA of every layer to the last step) for one model; the same recipe's
result is compared with the one over the local export folder. Usage:

    python benchmarks/share_url.py [--steps 16] [--layers 12] [--heads 4] [--n 128] [--d 768] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # share_http: the byte-counting server the tests use

MODELS = ("m70", "m160", "m410", "m1b", "m3b")
SITES = ("attn_out", "mlp_out")


def build(root: Path, steps: int, layers: int, heads: int, n: int, d: int) -> None:
    from layerlake.warehouse.synthetic import centred_gram, checkpoint_tables
    from layerlake.warehouse.writer import Warehouse

    w = Warehouse(root)
    rng = np.random.default_rng(0)
    for model in MODELS:
        base = rng.normal(size=(layers, len(SITES), n, 16))
        for s in range(steps):
            step = 1000 * s
            noise = 0.2 + 2.0 * (1 - s / max(1, steps - 1)) ** 2
            grams = {
                (layer, site): centred_gram(base[layer, j] + noise * rng.normal(size=(n, 16)))
                for layer in range(layers)
                for j, site in enumerate(SITES)
            }
            spectra = {
                (layer, m): np.sort(rng.gamma(2.0, 1.0, size=d))[::-1]
                for layer in range(layers)
                for m in ("dense", "dense_4h_to_h")
            }
            tables = checkpoint_tables(model, step, grams, spectra, d=d)
            per_head = []
            for h in range(heads):  # each head's sketches: the same keys with head = h
                more = checkpoint_tables(
                    model, step, {k: g * (1 + 0.1 * h) for k, g in grams.items()}, {}, d=d
                )
                sk = more["sketches"]
                per_head.append(
                    sk.set_column(
                        sk.schema.get_field_index("head"), "head", pa.array([h] * sk.num_rows, pa.int32())
                    )
                )
            tables["sketches"] = pa.concat_tables([tables["sketches"], *per_head])
            w.commit(f"{model}-{step}", "pythia", model, tables, {"step": step, "revision": f"step{step}"})


def served_bytes(server, url: str, query) -> tuple[int, int, object]:
    """(bytes, requests, result) of a fresh connection to ``url`` and ``query(con)``."""
    from layerlake import warehouse
    from layerlake.warehouse.share.http import KEPT

    KEPT.clear()  # blocks kept from an earlier query would not be fetched again
    server.reset()
    con = warehouse.connect(Path("/nonexistent-warehouse"), attach=[url])
    try:
        result = query(con)
    finally:
        con.close()
    return server.sent, server.requests, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--n", type=int, default=128)
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--keep", help="build in this folder and keep it")
    args = parser.parse_args()

    from share_http import Server

    from layerlake import warehouse
    from layerlake.queries import run_recipe
    from layerlake.warehouse import schema
    from layerlake.warehouse.share import export_dataset

    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="share-url-"))
    started = time.perf_counter()
    if not (base / "export" / "manifest.json").is_file():
        build(base / "warehouse", args.steps, args.layers, args.heads, args.n, args.d)
        export_dataset(base / "warehouse", base / "export")
    built = time.perf_counter() - started
    manifest = json.loads((base / "export" / "manifest.json").read_text())
    total = sum(f["bytes"] for f in manifest["files"])
    per_table = {t: sum(f["bytes"] for f in manifest["files"] if f["table"] == t) for t in manifest["tables"]}
    print(f"machine: {platform.machine()}, {platform.python_version()}, built in {built:.0f} s")
    print(
        f"export: {len(manifest['files'])} files, {total / 1e6:.1f} MB; manifest.json {(base / 'export' / 'manifest.json').stat().st_size / 1e3:.0f} kB"
    )
    print("  " + ", ".join(f"{t} {b / 1e6:.1f} MB" for t, b in per_table.items()))
    rows = []
    with Server(base) as server:
        url = server.url + "/export"
        sent, requests, _ = served_bytes(server, url, lambda con: None)
        rows.append(("connect (manifest, views)", sent, requests))
        for table in schema.TABLES:
            if table in per_table:
                sent, requests, _ = served_bytes(
                    server, url, lambda con, t=table: con.sql(f"select count(*) from {t}").fetchall()
                )
                rows.append((f"count(*) from {table}", sent, requests))
        model = MODELS[1]
        t0 = time.perf_counter()
        sent, requests, remote = served_bytes(
            server, url, lambda con: run_recipe(con, "convergence", {"models": [model]})
        )
        seconds = time.perf_counter() - t0
        rows.append((f"convergence recipe, models=[{model}] ({seconds:.1f} s)", sent, requests))
        sent, requests, _ = served_bytes(
            server,
            url,
            lambda con: con.sql("select sum(gram_norm) from sketches where model = 'm160'").fetchall(),
        )
        rows.append(("sum(gram_norm) of one model", sent, requests))
    local = warehouse.connect(Path("/nonexistent-warehouse"), attach=[base / "export"])
    try:
        t0 = time.perf_counter()
        want = run_recipe(local, "convergence", {"models": [model]})
        local_s = time.perf_counter() - t0
    finally:
        local.close()
    same = remote.sort_by([(c, "ascending") for c in ("site", "layer", "step")]).equals(
        want.sort_by([(c, "ascending") for c in ("site", "layer", "step")])
    )
    print(
        f"convergence for {model}: {remote.num_rows} rows, identical to the local folder's: {same} (local {local_s:.1f} s)"
    )
    print("| query | bytes served | share of the export | requests |\n| --- | --- | --- | --- |")
    for what, sent, requests in rows:
        print(f"| {what} | {sent / 1e6:.2f} MB | {100 * sent / total:.1f} % | {requests} |")


if __name__ == "__main__":
    main()
