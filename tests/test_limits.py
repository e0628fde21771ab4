"""The time and memory limits hold for every statement a user types (``layerlake sql``, the UI's SQL
console, ``share attach --sql``): each runs in a worker process (``warehouse.sandbox``) that is killed at
the time limit and whose memory the kernel bounds.

Each case below once ran far past its limit (one long function call that DuckDB's interrupt cannot stop;
memory DuckDB's ``memory_limit`` does not count). Every test asserts the limit's own error, never a
duration; a statement runs in a thread so that a limit that does not hold fails the test at a generous
hard timeout instead of hanging it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from layerlake.cli.main import main
from layerlake.core.duck import QueryLimits
from layerlake.warehouse.errors import QueryError
from layerlake.warehouse.powerlaw import MAX_EIGENVALUES
from layerlake.warehouse.sandbox import Sandbox
from layerlake.warehouse.similarity import MAX_GRAM_ROWS
from layerlake.warehouse.synthetic import checkpoint_tables
from layerlake.warehouse.writer import Warehouse

HARD_TIMEOUT_S = 300  # a limit that holds ends each statement long before this


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    store = Warehouse(tmp_path_factory.mktemp("limits") / "wh")
    for step in (0, 1):
        tables = checkpoint_tables("m", step, {(0, "mlp_out"): np.eye(3)}, {(0, "dense"): [4.0, 1.0]}, d=4)
        store.commit(f"t{step}", "s", "m", tables, {"step": step})
    return store.root


def run(box: Sandbox, sql: str):
    """The statement's rows, or the ``QueryError`` that ended it (raised), within the hard timeout."""

    def rows():
        with box.query(sql) as result:
            return result.read_all().to_pylist()

    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(rows).result(timeout=HARD_TIMEOUT_S)
    finally:
        pool.shutdown(
            wait=False
        )  # past the hard timeout the test fails now; closing the box kills the worker


LONG_CALLS = {
    # a Python function (the KS scan of ww_alpha's fit: seconds for one row below its size bound)
    "ww_alpha": f"select ww_alpha(a) from (select list(random() + 0.01) as a from range({MAX_EIGENVALUES - 1}))",
    "repeat": "select length(repeat('x', 1000000000)) as n",  # one native call building 1 GB
    "list_sort": "select len(list_sort(list(range))) as n from range(100000000)",  # one 100M-element sort
    "cross join": "select count(*) from range(1000000000000) a, range(1000) b",
}


@pytest.mark.parametrize("case", LONG_CALLS)
def test_a_single_long_call_is_stopped_at_the_time_limit(root, case):
    with Sandbox(root, limits=QueryLimits(timeout_s=1.0, memory_limit="2GB")) as box:
        with pytest.raises(QueryError) as stopped:
            run(box, LONG_CALLS[case])
        assert "ran longer than 1 s and was stopped" in stopped.value.message
        assert "--timeout" in stopped.value.fix
        assert run(box, "select 42 as answer") == [{"answer": 42}]  # a new worker serves the next one


MEMORY = {
    # a Python function's numpy arrays: mean_cca of a 4,095 x 4,095 Gram (two 134 MB matrices and more)
    "python function": f"select mean_cca(a, a) from (select list(random()) as a from range({4095 * 4096 // 2}))",
    "arrow result": "select list(range) as l from range(25000000)",  # a 200 MB value converted to Arrow
    "list_sort": "select len(list_sort(list(range))) as n from range(100000000)",  # DuckDB's own operator
}


@pytest.mark.parametrize("case", MEMORY)
def test_the_memory_limit_bounds_the_process_that_runs_the_statement(root, case):
    limit = 256 << 20
    with Sandbox(root, limits=QueryLimits(timeout_s=0, memory_limit="256MiB")) as box:
        with pytest.raises(QueryError) as stopped:
            run(box, MEMORY[case])
        assert "needed more than its memory limit of 256MiB" in stopped.value.message
        memory = box.last_memory
        assert memory is not None and memory["peak_rss"] - memory["base_rss"] <= limit + (32 << 20), memory
        assert run(box, "select 42 as answer") == [{"answer": 42}]


def test_a_worker_is_reused_between_statements_and_sees_new_rows(root, tmp_path):
    store = Warehouse(tmp_path / "wh")
    tables = checkpoint_tables("m", 0, {(0, "mlp_out"): np.eye(3)}, {(0, "dense"): [4.0, 1.0]}, d=4)
    store.commit("t0", "s", "m", tables, {"step": 0})
    with Sandbox(store.root, limits=QueryLimits(timeout_s=60)) as box:
        assert run(box, "select count(*) as n from spectra") == [{"n": 1}]
        worker = box._idle[0].process.pid
        store.commit("t1", "s", "m", checkpoint_tables("m", 1, {}, {(0, "dense"): [2.0]}, d=4), {"step": 1})
        assert run(box, "select count(*) as n from spectra") == [{"n": 2}]
        assert box._idle[0].process.pid == worker  # the same process, its views opened again
        with pytest.raises(QueryError, match="Referenced column"):
            run(box, "select nope from spectra")
        assert box._idle[0].process.pid == worker  # a plain SQL error does not cost a worker


@pytest.mark.parametrize(
    ("sql", "bound"),
    [(f"select ww_alpha(a) from (select list(random() + 0.01) as a from range({MAX_EIGENVALUES + 1}))",
      f"{MAX_EIGENVALUES:,} it takes"),
     (f"select svcca(a, a) from (select list(random()) as a from range({(MAX_GRAM_ROWS + 1) * (MAX_GRAM_ROWS + 2) // 2}))",
      f"{MAX_GRAM_ROWS:,} it takes")],
)  # fmt: skip
def test_quadratic_and_cubic_functions_refuse_inputs_past_their_bound(root, sql, bound):
    with Sandbox(root, limits=QueryLimits(timeout_s=0)) as box, pytest.raises(QueryError) as refused:
        run(box, sql)
    assert bound in refused.value.message and "SizeBoundError" in refused.value.message


def test_sql_and_share_attach_stop_a_long_call_and_refuse_writes(root, tmp_path, capsys):
    assert main(["sql", LONG_CALLS["ww_alpha"], "--root", str(root), "--timeout", "1"]) == 2
    assert "ran longer than 1 s" in capsys.readouterr().err
    assert main(["share", "export", str(tmp_path / "shared"), "--root", str(root)]) == 0
    attach = ["share", "attach", str(tmp_path / "shared"), "--root", str(root)]
    for statement in ("delete from spectra", "create table x as select 1", "set threads = 1"):
        assert main([*attach, "--sql", statement]) == 2
        assert "`share attach --sql` is read-only" in capsys.readouterr().err
    assert main([*attach, "--sql", LONG_CALLS["repeat"], "--timeout", "1"]) == 2
    assert "ran longer than 1 s" in capsys.readouterr().err
    assert main([*attach, "--sql", "select count(*) as n from spectra"]) == 0
    assert "2 rows" not in capsys.readouterr().out  # one row: the count
