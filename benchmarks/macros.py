"""The spectrum macros in SQL against the same formulas in numpy, per spectrum, at Pythia's widths.

Each macro of ``warehouse/sql/macros`` that reads a spectrum (erank, numerical rank, stable rank, matrix
entropy, WeightWatcher's alpha ...) runs over a table of identical random spectra of m values (2,000 of
them; 4 for WeightWatcher's alpha), m = 512 ... 2048 by default (Pythia-70m's d_model to 1b's), and the
same quantity is computed in numpy (WeightWatcher's alpha by the weightwatcher package's own fit, the
reference the tests hold the macro to). Printed: milliseconds per spectrum both ways and SQL / numpy. The SQL answer is checked against
numpy's before it is timed.

Run: ``.venv/bin/python benchmarks/macros.py [--widths 512,1024,2048]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import time

import duckdb
import numpy as np

from layerlake.warehouse.macros import install_functions

EPS = float(np.finfo(np.float64).eps)


def np_erank(s: np.ndarray) -> float:
    p = s[s > 0] / s[s > 0].sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def np_numerical_rank(s: np.ndarray, rows: int, cols: int) -> int:
    return int((s > s.max() * max(rows, cols) * EPS).sum())


def np_stable_rank(s: np.ndarray) -> float:
    return float((s**2).sum() / s.max() ** 2)


def np_matrix_entropy(s: np.ndarray, rows: int, cols: int) -> float:
    p = s[s > 0] ** 2 / (s**2).sum()
    return float(-(p * np.log(p)).sum() / np.log(np_numerical_rank(s, rows, cols)))


def np_ww_alpha(s: np.ndarray) -> float:
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):  # its import prints
        from weightwatcher.WW_powerlaw import WWFit
    evals = s**2
    return float(WWFit(evals[evals > 1e-5]).alpha)


MACROS = {  # SQL over (sv, r, c) -> (numpy, spectra per SQL query: enough that the query's own cost is small)
    "erank(sv)": (lambda s, r, c: np_erank(s), 2000),
    "numerical_rank(sv, r, c, 2.220446049250313e-16)": (np_numerical_rank, 2000),  # float64 values: eps 2^-52
    "stable_rank(sv)": (lambda s, r, c: np_stable_rank(s), 2000),
    "matrix_entropy(sv, r, c, 2.220446049250313e-16)": (np_matrix_entropy, 2000),
    "ww_alpha(sv)": (lambda s, r, c: np_ww_alpha(s), 4),
}


def best_of(repeats: int, work, *args) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work(*args)
        times.append(time.perf_counter() - started)
    return min(times)


def query(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    con.execute(sql).fetchall()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--widths", default="512,1024,2048")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    install_functions(con)
    print(f"# {platform.machine()}, Python {platform.python_version()}, DuckDB {duckdb.__version__}")
    print(
        "| macro | m | SQL ms / spectrum | numpy ms / spectrum (ww_alpha: the weightwatcher package) | SQL / numpy |"
    )
    print("| --- | --- | --- | --- | --- |")
    rng = np.random.default_rng(0)
    for m in map(int, args.widths.split(",")):
        s = np.sort(rng.gamma(2.0, 1.0, size=m))[::-1]
        rows, cols = m, 4 * m  # an MLP matrix's shape
        for macro, (reference, count) in MACROS.items():
            con.execute(
                "create or replace table t as select ?::DOUBLE[] as sv, ? as r, ? as c from range(?)",
                [s.tolist(), rows, cols, count],
            )
            want = reference(s, rows, cols)
            got = con.execute(f"select {macro} from t limit 1").fetchall()[0][0]
            assert abs(got - want) <= 1e-9 * abs(want), (macro, m, got, want)
            sql = best_of(args.repeats, query, con, f"select sum({macro}) from t") / count
            numpy = best_of(args.repeats, reference, s, rows, cols)
            print(f"| `{macro}` | {m} | {sql * 1e3:.2f} | {numpy * 1e3:.2f} | {sql / numpy:.1f} |")


if __name__ == "__main__":
    main()
