"""Training processes that track into one warehouse at once, and one killed during a snapshot."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import layerlake
from layerlake.warehouse.command import check
from layerlake.warehouse.runs import committed_run
from layerlake.warehouse.writer import Warehouse

WORKLOAD = str(Path(__file__).parent / "track_workload.py")


def workload(root: Path, run_id: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, WORKLOAD, str(root), run_id, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def steps_of(con, table: str, run_id: str) -> list[int]:
    rows = con.sql(f"select step from {table} where run_id = $r order by step", params={"r": run_id})
    return [s for (s,) in rows.fetchall()]


def test_three_training_processes_at_once_lose_and_duplicate_nothing(tmp_path):
    jobs = [workload(tmp_path, f"job{i}", "--steps", "8", "--seed", str(i)) for i in range(3)]
    for job in jobs:
        out, err = job.communicate(timeout=300)
        assert job.returncode == 0, err
        assert out.splitlines()[-1] == "done"
    con = layerlake.connect(tmp_path)
    runs = con.sql("select run_id, status, seed from runs order by run_id").fetchall()
    assert runs == [(f"job{i}", "finished", i) for i in range(3)]
    for i in range(3):
        assert steps_of(con, "checkpoints", f"job{i}") == list(range(8))
        assert steps_of(con, "scalars", f"job{i}") == list(range(8))
        layers = con.sql("select count(*) from sketches where run_id = $r", params={"r": f"job{i}"})
        assert layers.fetchall()[0][0] > 0
    con.close()
    assert check(["--root", str(tmp_path), "--verify-files"]) == 0


def test_sigkill_during_a_snapshot_keeps_what_was_committed_and_resume_adds_no_duplicates(tmp_path, capsys):
    job = workload(tmp_path, "victim", "--steps", "200")
    for line in job.stdout:  # let a few snapshots through, then kill it in the middle of the next ones
        if line.strip() == "snapshot 4":
            break
    time.sleep(random.Random(0).uniform(0.0, 0.3))
    job.send_signal(signal.SIGKILL)
    job.wait()
    store = Warehouse(tmp_path)
    for entry in store.committed().values():  # every committed snapshot is whole
        assert store.problems(entry, verify_sha256=True) == []
    con = layerlake.connect(tmp_path)
    committed = steps_of(con, "checkpoints", "victim")
    assert committed[:5] == [0, 1, 2, 3, 4] and committed == list(range(len(committed)))
    con.close()
    # check names the run that died
    assert check(["--root", str(tmp_path)]) == 1
    assert "killed_runs" in capsys.readouterr().out
    assert committed_run(store, "victim").status == "running"
    # the next start marks it killed; resuming it replays from step 3 (its last saved state, say)
    resumed = workload(tmp_path, "victim", "--steps", "12", "--start", "3", "--resume")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    con = layerlake.connect(tmp_path)
    assert steps_of(con, "checkpoints", "victim") == list(range(max(12, len(committed))))
    scalars = steps_of(con, "scalars", "victim")
    assert scalars == sorted(set(scalars)) and scalars[:12] == list(range(12))
    assert con.sql("select status from runs where run_id = 'victim'").fetchall() == [("finished",)]
    con.close()
    assert check(["--root", str(tmp_path), "--verify-files"]) == 0
    assert not list((tmp_path / "_staging").glob("*"))


@pytest.mark.slow  # a killed run as readers show it and --mark-killed records it: tests/test_killed_runs.py
def test_a_killed_run_is_marked_killed_by_the_next_start(tmp_path):
    job = workload(tmp_path, "gone", "--steps", "200")
    for line in job.stdout:
        if line.startswith("snapshot 1"):
            break
    job.send_signal(signal.SIGKILL)
    job.wait()
    other = workload(tmp_path, "next", "--steps", "1")
    assert other.wait(timeout=300) == 0
    run = committed_run(Warehouse(tmp_path), "gone")
    assert run.status == "killed" and run.ended_at is not None
    from layerlake.cli.main import main

    assert main(["runs", f"--root={tmp_path}"]) == 0
