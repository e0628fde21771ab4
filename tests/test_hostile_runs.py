"""Concurrent and resumed runs (issue 22.4): two processes starting one new run id at once, one is
refused; resuming a run whose process is alive is refused naming its host and pid; resuming under
another suite or model is refused; ``log()`` and ``snapshot()`` refuse a step the warehouse cannot
store and a value that is no number at the call, and the run's other rows stay."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from hostile_data import tree_hash

import layerlake
from layerlake.cli.main import main
from layerlake.core.errors import ConfigError
from layerlake.core.provenance import host
from layerlake.warehouse.errors import WarehouseError
from layerlake.warehouse.runs import Run, RunKind, begin_run, committed_run
from layerlake.warehouse.writer import Warehouse

STARTER = """
import sys
from layerlake.warehouse.runs import Run, RunKind, begin_run
from layerlake.warehouse.writer import Warehouse
store = Warehouse(sys.argv[1])
print("ready", flush=True)
try:
    begin_run(store, Run("same", "toy", "m1", RunKind.train), resume=False)
    print("started")
except Exception as error:
    print("refused", type(error).__name__, error)
"""


def test_two_processes_starting_one_new_run_id_at_once_one_is_refused(tmp_path):
    store = Warehouse(tmp_path)
    with store.lock():  # both starters get as far as the lock, then race
        starters = [
            subprocess.Popen(
                [sys.executable, "-c", STARTER, str(tmp_path)], stdout=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        for p in starters:
            assert p.stdout.readline().strip() == "ready"
        time.sleep(1.0)  # let both read the manifest before the lock opens (the race being tested)
    outs = sorted(p.communicate(timeout=120)[0].strip() for p in starters)
    assert outs[1] == "started" and outs[0].startswith("refused ConfigError") and "exists already" in outs[0]
    assert len([e for e in Warehouse(tmp_path).entries() if e.task_id == "run.same"]) == 1


def test_resuming_a_run_whose_process_is_alive_is_refused_naming_host_and_pid(tmp_path):
    store = Warehouse(tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        begin_run(store, Run("live", "toy", "m1", RunKind.train, pid=other.pid))
        before = tree_hash(tmp_path)
        with pytest.raises(WarehouseError, match=f"process {other.pid} on {host()} is alive"):
            begin_run(store, Run("live", "toy", "m1", RunKind.train), resume=True)
        assert tree_hash(tmp_path) == before
    finally:
        other.kill()
        other.wait()
    begin_run(store, Run("live", "toy", "m1", RunKind.train), resume=True)  # its process is gone: resumes
    assert committed_run(store, "live").pid == os.getpid()


def test_resuming_under_another_suite_or_model_is_refused(tmp_path):
    store = Warehouse(tmp_path)
    begin_run(store, Run("r", "toy", "m1", RunKind.train, pid=None))
    before = tree_hash(tmp_path)
    for suite, model in (("toy", "m2"), ("other", "m1")):
        with pytest.raises(WarehouseError, match="is a run of toy/m1"):
            begin_run(store, Run("r", suite, model, RunKind.train), resume=True)
    assert tree_hash(tmp_path) == before


@pytest.fixture
def run(tmp_path):
    pytest.importorskip("torch")
    tracked = layerlake.track(suite="toy", model_name="m", run_id="r", warehouse=tmp_path, quiet=True)
    tracked.__enter__()  # its commit thread; each test ends the run with finish()
    tracked.log(0, loss=1.0)
    tracked.log(1, loss=0.5)
    yield tracked


@pytest.mark.parametrize(
    ("step", "values", "match"),
    [
        (2**63, {"loss": 1.0}, "outside the steps"),
        (-1, {"loss": 1.0}, "outside the steps"),
        ("7", {"loss": 1.0}, "not a whole number"),
        (2.5, {"loss": 1.0}, "not a whole number"),
        (3, {"loss": "abc"}, "loss = 'abc' is not a number"),
        (3, {"loss": [1.0, 2.0]}, "is not a number"),
    ],
)
def test_log_refuses_what_it_cannot_store_at_the_call_and_keeps_the_other_rows(
    run, tmp_path, step, values, match
):
    with pytest.raises(ConfigError, match=match):
        run.log(step, **values)
    run.log(2, loss=0.25)
    run.finish()
    con = layerlake.connect(tmp_path)
    try:
        assert con.sql("select step, value from scalars order by step").fetchall() == [
            (0, 1.0),
            (1, 0.5),
            (2, 0.25),
        ]
    finally:
        con.close()


def test_snapshot_refuses_a_step_the_warehouse_cannot_store(run, tmp_path):
    with pytest.raises(ConfigError, match="outside the steps"):
        run.snapshot(2**63, None, force=True)
    run.finish()
    assert main(["check", "--root", str(tmp_path)]) == 0


def test_a_recorded_failure_with_a_step_beyond_int64_breaks_no_reader(tmp_path, capsys):
    store = Warehouse(tmp_path)
    begin_run(store, Run("r", "toy", "m1", RunKind.train))
    store.record_failure("t", "toy", "m1", "boom", {"kind": "snapshot", "step": 2**63}, run_id="r")
    assert main(["sql", "select task_id, step from failures", "--root", str(tmp_path)]) == 0
    assert main(["check", "--root", str(tmp_path)]) in (0, 1)
    assert "Traceback" not in capsys.readouterr().err
