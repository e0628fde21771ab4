"""Compaction: connect plus a full scan over many tracked snapshots, before and after ``compact``.

Writes ``--runs`` x ``--snapshots`` snapshot commits the way tracking does (one small task per snapshot,
each the real rows a snapshot of a tiny GPT-NeoX model gives, restamped with its step), plus each run's
scalars, into a fresh warehouse; then times, best of ``--repeats``: ``connect()`` and a full scan (every
view counted, and every Gram's norm summed, which reads a column of every sketches file). Then
``compact`` and the same again. Also reports the time per commit while writing. Usage:

    python benchmarks/compaction.py [--runs 100] [--snapshots 150] [--repeats 3] [--keep DIR]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]


def restamped(tables: dict[str, pa.Table], step: int) -> dict[str, pa.Table]:
    out = {}
    for name, table in tables.items():
        if "step" in table.column_names:
            table = table.set_column(
                table.schema.get_field_index("step"), "step", pa.array([step] * table.num_rows, pa.int64())
            )
        out[name] = table
    return out


def scan(root: Path) -> tuple[float, float, tuple]:
    import layerlake
    from layerlake.warehouse import schema

    started = time.perf_counter()
    con = layerlake.connect(root)
    connected = time.perf_counter() - started
    counts = tuple(con.sql(f"select count(*) from {t}").fetchall()[0][0] for t in schema.TABLES)
    norms = con.sql("select sum(gram_norm) from sketches").fetchall()[0][0]
    con.close()
    return connected, time.perf_counter() - started, (*counts, round(norms, 3))


def best_scan(root: Path, repeats: int) -> tuple[float, float, tuple]:
    runs = [scan(root) for _ in range(repeats)]
    assert len({r[2] for r in runs}) == 1
    return min(r[0] for r in runs), min(r[1] for r in runs), runs[0][2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--snapshots", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", help="write the warehouse into this (new) folder and keep it")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    import tiny_models

    import layerlake
    from layerlake.warehouse.compact import compact
    from layerlake.warehouse.writer import Warehouse

    model = tiny_models.neox(seed=0)
    probe = [[1, 2, 3, 4, 5, 6, 7, 8]] * 4
    with tempfile.TemporaryDirectory() as folder:
        root = Path(args.keep or folder)
        store = Warehouse(root)
        commit_seconds = []
        for r in range(args.runs):
            with layerlake.track(model, suite="bench", model_name="neox", run_id=f"run{r:03d}", probe=probe,
                                 warehouse=root, compact=False) as run:  # fmt: skip
                tables, _ = run.take(0, model)  # a real snapshot's rows, restamped for each step below
                for s in range(args.snapshots):
                    run.log(s, loss=1.0 / (s + 1))
                    started = time.perf_counter()
                    store.commit(run.task_id(s), "bench", "neox", restamped(tables, s),
                                 {"kind": "extract", "step": s}, run_id=run.run_id)  # fmt: skip
                    commit_seconds.append(time.perf_counter() - started)
            print(f"\rwrote run {r + 1}/{args.runs}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        files = sum(1 for _ in root.rglob("*.parquet"))
        before = best_scan(root, args.repeats)
        started = time.perf_counter()
        report = compact(root)
        took = time.perf_counter() - started
        after = best_scan(root, args.repeats)
        assert before[2] == after[2], "compaction changed what a reader sees"
        first, last = commit_seconds[:100], commit_seconds[-100:]
        commit_seconds.sort()
        print(
            f"# {platform.machine()}, Python {platform.python_version()}, {args.runs} runs x "
            f"{args.snapshots} snapshots = {args.runs * args.snapshots} snapshot tasks, {files} files"
        )
        print(f"commit per snapshot: median {commit_seconds[len(commit_seconds) // 2] * 1e3:.1f} ms, "
              f"first 100 {sum(first) / len(first) * 1e3:.1f} ms, last 100 {sum(last) / len(last) * 1e3:.1f} ms")  # fmt: skip
        print(
            f"compaction: {report.files_before} -> {report.files_after} files, "
            f"{report.manifest_lines_before} -> {report.manifest_lines_after} manifest lines, {took:.1f} s"
        )
        print("| | connect | connect + full scan |")
        print("| --- | --- | --- |")
        print(f"| before compaction | {before[0]:.2f} s | {before[1]:.2f} s |")
        print(f"| after compaction | {after[0]:.2f} s | {after[1]:.2f} s |")
        print(f"| ratio after / before | {after[0] / before[0]:.3f} | {after[1] / before[1]:.3f} |")


if __name__ == "__main__":
    main()
