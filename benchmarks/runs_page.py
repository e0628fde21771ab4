"""The UI's runs table at scale: how long its data takes (``/api/runs_table``: every run with the config
values that differ, the last logged values and tags, then filtered and sorted) on a warehouse of N runs
with K config keys, against the baseline of reading the ``runs`` table alone in-process on a fresh
``layerlake.connect()`` (what any page over the runs pays). Goal: the page's data in <= 1 s at 1,000 runs
x 100 config keys on the 2-core dev machine. Usage:

    python benchmarks/runs_page.py [--runs 1000] [--keys 100] [--steps 50] [--repeats 3] [--root DIR]

The warehouse is built once under --root (default: a temporary folder): each run's row (a config of K
keys in ten groups, a fifth of them differing between runs) and its logged loss, lr and grad_norm over
--steps steps, committed through the writer as a tracked run's are; every tenth run tagged. Measured
twice: as tracked runs leave a warehouse (a run's files apart from the others'), and after ``layerlake
compact``. The cold page is a fresh server's first answer (it connects and builds the table); later
answers (another filter, a sort) reuse the table built for this warehouse version.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa


def build(root: Path, runs: int, keys: int, steps: int) -> None:
    from layerlake.warehouse import run_admin, schema
    from layerlake.warehouse.runs import Run, RunKind, RunStatus, prepare_run
    from layerlake.warehouse.writer import Warehouse

    store = Warehouse(root)
    start = datetime(2026, 12, 1, tzinfo=timezone.utc)
    batch = []
    for i in range(runs):
        config = {
            f"group{g}": {
                f"key{k}": (i % 7) * 1e-4 * (k + 1) if (g * 10 + k) % 5 == 0 else f"value{k}"
                for k in range(keys // 10)
            }
            for g in range(10)
        }
        run = Run(
            f"run{i:05d}", "bench", f"model{i % 4}", RunKind.train, RunStatus.finished, seed=i % 5,
            started_at=start + timedelta(minutes=i), ended_at=start + timedelta(minutes=i, seconds=30),
            config_json=json.dumps(config), sweep_dir="multirun/bench", job_num=i,
        )  # fmt: skip
        now = start + timedelta(minutes=i)
        scalars = pa.Table.from_pylist(
            [
                {"step": s, "name": name, "value": value, "logged_at": now, "rank": None}
                for s in range(steps)
                for name, value in (("loss", 4.0 - s * 0.01 - i * 1e-4), ("lr", 1e-3), ("grad_norm", 1.0 + s))
            ],
            schema=schema.SCALARS.arrow_schema(),
        )
        batch.append(prepare_run(store, run))
        batch.append(store.prepare(f"scalars.{run.run_id}.0", run.suite, run.model, {"scalars": scalars},
                                   {"kind": "scalars"}, run_id=run.run_id))  # fmt: skip
        if len(batch) >= 200:
            store.publish(batch)
            batch = []
    if batch:
        store.publish(batch)
    for i in range(0, runs, 10):
        run_admin.tag(store, f"run{i:05d}", {"verdict": "keep" if i % 20 else "drop"})


def timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--keys", type=int, default=100)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--root")
    args = parser.parse_args()
    root = Path(args.root) if args.root else Path(tempfile.mkdtemp()) / "warehouse"
    if not (root / "_manifest").exists():
        print(
            f"building {args.runs} runs x {args.keys} config keys x {args.steps} steps in {root} ...",
            flush=True,
        )
        print(f"  built in {timed(lambda: build(root, args.runs, args.keys, args.steps)):.1f} s", flush=True)

    compacted = root.with_name(root.name + "-compacted")
    if not compacted.exists():
        import shutil

        from layerlake.warehouse.compact import compact

        shutil.copytree(root, compacted)
        compact(compacted)
    print(f"{platform.machine()}, Python {platform.python_version()}, load average {_load()}", flush=True)
    for name, folder in (
        ("as tracked runs leave it (files per run)", root),
        ("after layerlake compact", compacted),
    ):
        print(f"\n## {name}", flush=True)
        measure(folder, args.repeats)


def measure(root: Path, repeats: int) -> None:
    import layerlake
    from layerlake.ui.app import UiApp

    def baseline() -> None:
        con = layerlake.connect(root)
        con.sql("select * from runs").to_arrow_table()
        con.close()

    cases = {
        "filter group0.key0 > 3e-4": "filter=group0.key0%20%3E%203e-4",
        "search + sort": "search=keep&sort=last.loss&desc=1",
    }
    rows = []
    for repeat in range(repeats):
        base = timed(baseline)
        app = UiApp(root)  # a fresh server: its first answer connects and builds the table (the cold page)
        cpu = time.process_time()
        cold = timed(lambda app=app: app.respond("GET", "/api/runs_table", ""))
        cpu = time.process_time() - cpu
        warm = {
            name: timed(lambda q=q, app=app: app.respond("GET", "/api/runs_table", q))
            for name, q in cases.items()
        }
        app.close()
        rows.append((base, cold, cpu, warm))
        print(f"repeat {repeat + 1}: baseline {base:.3f} s; page data cold {cold:.3f} s ({cold / base:.2f}x), "
              f"CPU {cpu:.3f} s; " + ", ".join(f"{k} {v:.3f} s" for k, v in warm.items()), flush=True)  # fmt: skip
    app = UiApp(root)
    response = app.respond("GET", "/api/runs_table", "")
    data = json.loads(response.body)
    app.close()
    print(f"{len(data['rows'])} runs, {len(data['columns'])} columns "
          f"({sum(c.startswith('config.') for c in data['columns'])} differing config keys), "
          f"answer {len(response.body) / 1e6:.1f} MB; load average now {_load()}")  # fmt: skip
    base = statistics.median(r[0] for r in rows)
    cold = statistics.median(r[1] for r in rows)
    cpu = statistics.median(r[2] for r in rows)
    print(
        f"median: baseline (connect, read runs) {base:.3f} s; page data cold {cold:.3f} s = "
        f"{cold / base:.2f}x baseline (CPU {cpu:.3f} s)"
    )
    for name in cases:
        print(f"  then {name}: {statistics.median(r[3][name] for r in rows):.3f} s")


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
