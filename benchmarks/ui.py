"""`layerlake ui` on a warehouse: how long the server takes to start (until it prints its URL), and how
long each page's data takes to arrive over HTTP, each against the same query run in-process on a fresh
``layerlake.connect()`` (the baseline: what the page adds to the query itself). Usage:

    python benchmarks/ui.py [--root DATA/warehouse] [--repeats 3]

Run `make demo` first for the default root (the demo warehouse); `python benchmarks/query.py --root
DIR/warehouse` builds the full-study warehouse (5 Pythia shapes x 154 checkpoints) to point it at.
A recipe's data is its rows and its figure (the Vega-Lite spec, with the rows it draws).
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


def pages(model: str) -> dict:
    """endpoint -> the in-process work it stands for (None: no single query to compare with)."""
    return {
        "/": None,  # the page shells: HTML, and the forms' stored-value choices
        "/convergence": None,
        "/matrix": None,
        "/api/overview": None,
        "/api/sql?" + urllib.parse.urlencode({"q": "select * from checkpoints"}): (
            "sql", "select * from checkpoints"),
        # the convergence page: Figure 1's bands and the per-layer points behind them, and its figure
        "/api/recipe?name=layer_percentiles": ("recipe", "layer_percentiles", {}),
        "/api/recipe?name=convergence": ("recipe", "convergence", {}),
        "/api/recipe?name=stabilisation": ("recipe", "stabilisation", {}),
        "/api/recipe?name=rank_trajectories": ("recipe", "rank_trajectories", {}),
        f"/api/recipe?name=step_similarity&model={model}": ("recipe", "step_similarity", {"model": model}),
        "/api/recipe?name=model_similarity": ("recipe", "model_similarity", {}),
        "/api/recipe?name=run_similarity": ("recipe", "run_similarity", {}),
    }  # fmt: skip


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


def serve(root: str, *flags: str) -> tuple[subprocess.Popen, str, float]:
    """Start `layerlake ui` on ``root``; (process, base URL, seconds from process start to URL printed)."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "layerlake.cli", "ui", "--root", root, "--port", "0", *flags],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    line = proc.stdout.readline()
    base = re.search(r"http://[\d.]+:\d+", line).group(0)
    return proc, base, time.perf_counter() - started


def first_model(root: str) -> str:
    """The model a figure page selects first (the smallest by name: 70m before 160m)."""
    import layerlake
    from layerlake.queries.figures import natural_key

    con = layerlake.connect(root)
    models = [m for (m,) in con.sql("select distinct model from checkpoints").fetchall()]
    con.close()
    return sorted(models, key=natural_key)[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=str(ROOT / "data" / "warehouse"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = first_model(args.root)
    print(f"# {platform.machine()}, Python {platform.python_version()}, warehouse {args.root}")
    proc, base, start_s = serve(args.root, "--no-warm-up")
    try:
        fetch(base + "/static/vega.js")  # the browser's first load; cached afterwards
        print(f"server start (process start to URL printed): {start_s:.2f} s")
        print(
            "| page data | first request (nothing kept) | again (answer kept) | same query in-process, fresh connect |"
        )
        print("| --- | --- | --- | --- |")
        for path, work in pages(model).items():
            first = fetch(base + path)
            again = min(fetch(base + path) for _ in range(args.repeats - 1))
            alone = (
                "-"
                if work is None
                else f"{min(in_process(args.root, work) for _ in range(args.repeats)):.2f} s"
            )
            print(f"| `{urllib.parse.unquote(path)}` | {first:.2f} s | {again:.3f} s | {alone} |")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # with the warm-up (the default): a browser opening each figure page right after the URL is printed
    proc, base, start_s = serve(args.root)
    try:
        began = time.perf_counter()
        fetch(base + "/static/vega.js")  # a browser loads the page's script first
        print(
            f"\nwith warm-up: server start {start_s:.2f} s; each figure page's data asked for at once, in turn:"
        )
        for path in ("/api/overview", "/api/recipe?name=layer_percentiles", "/api/recipe?name=convergence",
                     f"/api/recipe?name=step_similarity&model={model}", "/api/recipe?name=rank_trajectories"):  # fmt: skip
            took = fetch(base + path)
            print(
                f"  `{urllib.parse.unquote(path)}`: {took:.2f} s (answered {time.perf_counter() - began:.2f} s after start)"
            )
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
