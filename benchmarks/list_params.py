"""Long list parameters: ``layerlake query stabilisation models=[...]`` with 10, 2,000 and 20,000
names, through layerlake (long plain lists skip the override grammar, ``conf/overrides.py``) and through
Hydra's own path (its grammar, with its quadratic list visitor, and OmegaConf), in one process.

Usage: ``python benchmarks/list_params.py [--sizes 10,2000,20000] [--hydra-max 2000]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def warehouse(data: Path) -> None:
    """A small warehouse: two models, three checkpoints each (synthetic rows, no torch)."""
    from layerlake.warehouse.synthetic import checkpoint_tables
    from layerlake.warehouse.writer import Warehouse

    store = Warehouse(data / "warehouse")
    rng = np.random.default_rng(0)
    for model in ("m0", "m1"):
        for step in (0, 10, 20):
            grams = {(layer, "mlp_out"): rng.normal(size=(4, 4)) for layer in (0, 1)}
            tables = checkpoint_tables(model, step, grams, {(0, "dense"): [2.0, 1.0]}, d=4)
            store.commit(f"{model}-{step}", "embedded", model, tables, {"step": step})


def query(data: Path, n: int) -> float:
    from layerlake.cli.main import main

    names = ",".join(["m0", "m1", *(f"x{i}" for i in range(n - 2))])
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["query", "stabilisation", f"paths.data={data}", f"models=[{names}]", "progress=false"])
    assert code == 0, code
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="10,2000,20000")
    parser.add_argument("--hydra-max", type=int, default=2000, help="largest list given to Hydra's own path")
    args = parser.parse_args()
    from hydra.core.override_parser.overrides_visitor import HydraOverrideVisitor

    from layerlake.conf import overrides

    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        warehouse(data)
        query(data, 10)  # warm up: imports, the recipe configs
        overrides.linear_list_parsing()
        layerlake = {n: query(data, n) for n in sizes}
        # Hydra's own path: every list through its grammar (with its quadratic list visitor) and OmegaConf
        HydraOverrideVisitor.visitListContainer = overrides.hydra_list_visitor
        overrides.LONG_LIST = 10**12
        hydra = {n: query(data, n) for n in sizes if n <= args.hydra_max}
    print(f"# {platform.machine()}, Python {platform.python_version()}")
    print("| list length | Hydra's grammar and OmegaConf | layerlake | ratio |")
    print("| --- | --- | --- | --- |")
    for n in sizes:
        before = f"{hydra[n]:.1f} s" if n in hydra else "-"
        ratio = f"{hydra[n] / layerlake[n]:.1f}x" if n in hydra else "-"
        print(f"| {n:,} | {before} | {layerlake[n]:.1f} s | {ratio} |")
    small, large = sizes[0], sizes[-1]
    print(f"layerlake: {large:,} items take {layerlake[large] / layerlake[small]:.2f}x the time of {small:,}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
