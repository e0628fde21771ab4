"""``layerlake sql --max-rows 5`` over a large result: peak memory with the result streamed (what the
command does: its worker process runs the statement and streams the rows back) against the result
fetched whole and then shown (the baseline), each in a fresh child process of this script, on the same
small warehouse; the peak is the larger of the command's process and its worker's. Usage:

    python benchmarks/sql_memory.py [--rows 50000000]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import resource, sys
from layerlake.warehouse import command
from layerlake.warehouse.views import connect
root, mode, query = sys.argv[1:4]
if mode == "streamed":  # the command: the statement runs in a worker process, the rows stream back
    command.sql([query, "--root", root, "--max-rows", "5"])
else:  # the whole result in this process, then the table
    con = connect(root)
    table = con.sql(query).to_arrow_table()
    command.render(table, max_rows=5)
usage = [resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
print("PEAK_KB", max(usage), file=sys.stderr)  # the largest of this process and its worker
"""


def peak_mib(root: str, mode: str, query: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, root, mode, query], capture_output=True, text=True, check=True
    )
    line = next(x for x in done.stderr.splitlines() if x.startswith("PEAK_KB"))
    return int(line.split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=50_000_000)
    args = parser.parse_args()
    import numpy as np

    from layerlake.warehouse.synthetic import checkpoint_tables
    from layerlake.warehouse.writer import Warehouse

    query = f"select range as i, range * 2 as j, range % 7 as k from range({args.rows})"
    with tempfile.TemporaryDirectory() as folder:
        store = Warehouse(Path(folder) / "wh")
        tables = checkpoint_tables("m", 0, {(0, "mlp_out"): np.eye(3)}, {(0, "dense"): [4.0, 1.0]}, d=4)
        store.commit("t0", "s", "m", tables, {})
        root = str(store.root)
        empty = peak_mib(root, "streamed", "select 1")
        streamed = peak_mib(root, "streamed", query)
        whole = peak_mib(root, "whole", query)
    size = args.rows * 3 * 8 / 2**20
    print(f"# {platform.machine()}, Python {platform.python_version()}, result {args.rows:,} rows x 3 int64 "
          f"({size:,.0f} MiB)")  # fmt: skip
    print("| what | peak RSS |")
    print("| --- | --- |")
    print(f"| `select 1` (the process alone) | {empty:,.0f} MiB |")
    print(f"| whole result fetched, then shown (baseline) | {whole:,.0f} MiB |")
    print(f"| streamed, `--max-rows 5` | {streamed:,.0f} MiB |")
    print(f"above the process alone: baseline {whole - empty:,.0f} MiB, streamed {streamed - empty:,.0f} MiB "
          f"({(whole - empty) / max(streamed - empty, 1):.0f}x less)")  # fmt: skip


if __name__ == "__main__":
    main()
