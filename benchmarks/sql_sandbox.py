"""What running a user's statement in a worker process (``warehouse.sandbox``) costs, against running it
in this process on an open connection (the baseline: what the UI's console and ``layerlake sql`` did
before), side by side on one small warehouse, alternating, median of ``--repeats``:

- the UI's console: a warm worker of the pool (views open) against an open connection with DuckDB's own
  limits (``limited``);
- ``layerlake sql``: a fresh worker forked per command (fork, open the views, run, stop) against opening
  the views in this process and running the statement there.

Usage: ``python benchmarks/sql_sandbox.py [--repeats 15]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

STATEMENTS = {
    "select 1": "select 1 as one",
    "100 spectra rows": "select * from spectra limit 100",
    "100,000 rows x 2": "select range as i, range * 2 as j from range(100000)",
}


def warehouse(folder: Path) -> Path:
    from layerlake.warehouse.synthetic import checkpoint_tables
    from layerlake.warehouse.writer import Warehouse

    store = Warehouse(folder / "wh")
    rng = np.random.default_rng(0)
    for step in range(8):
        grams = {(layer, "mlp_out"): np.cov(rng.normal(size=(16, 32))) for layer in range(4)}
        spectra = {(layer, "dense"): np.sort(rng.random(64))[::-1] for layer in range(4)}
        store.commit(f"t{step}", "s", "m", checkpoint_tables("m", step, grams, spectra, d=32), {"step": step})
    return store.root


def in_process(con, sql: str, limits) -> int:
    from layerlake.core.duck import limited

    with limited(con, limits):
        return con.sql(sql).to_arrow_table().num_rows


def pooled(box, sql: str) -> int:
    with box.query(sql) as result:
        return result.read_all().num_rows


def fresh_in_process(root: Path, sql: str, limits) -> int:
    from layerlake.warehouse.views import connect

    con = connect(root)
    try:
        return in_process(con, sql, limits)
    finally:
        con.close()


def fresh_worker(root: Path, sql: str, limits) -> int:
    from layerlake.warehouse.sandbox import Sandbox

    with Sandbox(root, limits=limits, start="fork", max_workers=1) as box:
        return pooled(box, sql)


def timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    from layerlake.core.duck import QueryLimits
    from layerlake.warehouse.sandbox import Sandbox
    from layerlake.warehouse.views import connect

    limits = QueryLimits(timeout_s=300, memory_limit="4GB")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        root = warehouse(Path(folder))
        # the CLI forks itself: it has opened no DuckDB database then; measured first, before any is open
        cli = {name: ([], []) for name in STATEMENTS}
        for _ in range(args.repeats):
            for name, sql in STATEMENTS.items():
                cli[name][0].append(timed(fresh_in_process, root, sql, limits))
                cli[name][1].append(timed(fresh_worker, root, sql, limits))
        con = connect(root)
        box = Sandbox(root, limits=limits)  # the UI's pool: forkserver, one warm worker
        pooled(box, "select 1")
        ui = {name: ([], []) for name in STATEMENTS}
        for _ in range(args.repeats):
            for name, sql in STATEMENTS.items():
                ui[name][0].append(timed(in_process, con, sql, limits))
                ui[name][1].append(timed(pooled, box, sql))
        box.close()
        con.close()
    for where, table in (("console (warm worker)", ui), ("`layerlake sql` (fork per command)", cli)):
        for name, (base, sandboxed) in table.items():
            b, s = statistics.median(base), statistics.median(sandboxed)
            rows.append((where, name, b * 1e3, s * 1e3, s / b))
    print(f"# {platform.machine()}, Python {platform.python_version()}, median of {args.repeats}")
    print("| path | statement | in this process (ms) | worker process (ms) | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for where, name, b, s, ratio in rows:
        print(f"| {where} | {name} | {b:,.1f} | {s:,.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
