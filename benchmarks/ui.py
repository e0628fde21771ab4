"""`layerlake ui` on a warehouse: how long the server takes to start (until it prints its URL), and how
long each page's data takes to arrive over HTTP, each against the same query run in-process on a fresh
``layerlake.connect()`` (the baseline: what the page adds to the query itself). Usage:

    python benchmarks/ui.py [--root DATA/warehouse] [--repeats 3]

Run `make demo` first for the default root (the demo warehouse).
"""

from __future__ import annotations

import argparse
import platform
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = {  # endpoint -> the in-process work it stands for
    "/api/overview": None,
    "/api/sql?" + urllib.parse.urlencode({"q": "select * from checkpoints"}): (
        "sql",
        "select * from checkpoints",
    ),
    "/api/recipe?name=convergence": ("recipe", "convergence", {}),
    "/api/recipe?name=stabilisation": ("recipe", "stabilisation", {}),
    "/api/recipe?name=rank_trajectories": ("recipe", "rank_trajectories", {}),
    "/api/recipe?name=step_similarity&model=embedded-s": (
        "recipe",
        "step_similarity",
        {"model": "embedded-s"},
    ),
    "/api/recipe?name=run_similarity": ("recipe", "run_similarity", {}),
}


def fetch(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as response:
        response.read()
        assert response.status == 200, url
    return time.perf_counter() - started


def in_process(root: str, work: tuple) -> float:
    import layerlake
    from layerlake.queries import run_recipe

    started = time.perf_counter()
    con = layerlake.connect(root)
    if work[0] == "sql":
        con.sql(work[1]).to_arrow_table()
    else:
        run_recipe(con, work[1], work[2])
    con.close()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=str(ROOT / "data" / "warehouse"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "layerlake.cli", "ui", "--root", args.root, "--port", "0"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    try:
        line = proc.stdout.readline()
        start_s = time.perf_counter() - started
        base = re.search(r"http://[\d.]+:\d+", line).group(0)
        fetch(base + "/static/vega.js")  # the browser's first load; cached afterwards
        print(f"# {platform.machine()}, Python {platform.python_version()}, warehouse {args.root}")
        print(f"server start (process start to URL printed): {start_s:.2f} s")
        print("| page data | over HTTP (best of n) | same query in-process, fresh connect | ratio |")
        print("| --- | --- | --- | --- |")
        for path, work in PAGES.items():
            served = min(fetch(base + path) for _ in range(args.repeats))
            if work is None:
                print(f"| `{urllib.parse.unquote(path)}` | {served:.2f} s | - | - |")
                continue
            alone = min(in_process(args.root, work) for _ in range(args.repeats))
            print(
                f"| `{urllib.parse.unquote(path)}` | {served:.2f} s | {alone:.2f} s | {served / alone:.2f} |"
            )
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
