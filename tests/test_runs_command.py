"""`layerlake runs` and its subcommands: list and filter; tag and note (shown in SQL); archive and restore;
delete, all or nothing (a SIGKILL at any moment leaves the run whole or gone), with --dry-run."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import layerlake
from layerlake.cli.main import main
from layerlake.warehouse import schema
from layerlake.warehouse.command import check
from layerlake.warehouse.compact import compact
from layerlake.warehouse.runs import RunKind, begin_run, new_run
from layerlake.warehouse.synthetic import checkpoint_tables
from layerlake.warehouse.writer import Warehouse

VIEWS = tuple(schema.TABLES)


def checkpoint(model: str, step: int) -> dict:
    rng = np.random.default_rng(step)
    grams = {(layer, "mlp_out"): rng.normal(size=(4, 4)) for layer in (0, 1)}
    spectra = {(layer, "dense"): sorted(rng.random(4), reverse=True) for layer in (0, 1)}
    return checkpoint_tables(model, step, grams, spectra, d=4)


def make_warehouse(root: Path, steps: int = 4) -> Path:
    """Three runs: two of model m with config lr 1e-3 and 1e-2 (logged loss, checkpoint rows), and c."""
    store = Warehouse(root)
    for run_id, lr, model in (("r1", 1e-3, "m"), ("r2", 1e-2, "m"), ("c", 1e-3, "n")):
        with layerlake.track(
            suite="s", model_name=model, run_id=run_id, warehouse=root, seed=0, quiet=True,
            config={"optim": {"lr": lr}, "batch": 4},
        ) as run:  # fmt: skip
            for step in range(steps):
                run.log(step, loss=4.0 - step * lr * 10)
        for step in range(steps):
            store.commit(
                f"{run_id}-ck{step}", "s", model, checkpoint(model, step), {"step": step}, run_id=run_id
            )
    return root


def content(root: Path) -> dict[str, list[str]]:
    con = layerlake.connect(root)
    try:
        return {v: sorted(map(repr, con.sql(f"select * from {v}").fetchall())) for v in VIEWS}
    finally:
        con.close()


def run_rows(root: Path) -> dict[str, int]:
    """run_id -> its rows over every table."""
    out: dict[str, int] = {}
    con = layerlake.connect(root)
    try:
        for view in VIEWS:
            for run_id, n in con.execute(f"select run_id, count(*) from {view} group by run_id").fetchall():
                out[run_id] = out.get(run_id, 0) + n
    finally:
        con.close()
    return out


@pytest.fixture(autouse=True)
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # every column of the printed table


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return make_warehouse(tmp_path_factory.mktemp("runs") / "wh")


@pytest.fixture
def root(tmp_path, source) -> Path:
    copy = tmp_path / "wh"
    shutil.copytree(source, copy)
    return copy


def test_runs_lists_filters_and_sorts(source, capsys):
    assert main(["runs", "--root", str(source)]) == 0
    out = capsys.readouterr().out
    assert all(r in out for r in ("r1", "r2", "c")) and "config.optim.lr" in out and "last.loss" in out
    assert main(["runs", "--root", str(source), "--filter", "lr > 2e-3"]) == 0
    out = capsys.readouterr().out
    assert "r2" in out and "r1" not in out and "1 of 3 runs" in out
    assert main(["runs", "--root", str(source), "-f", "model = m", "--sort", "last.loss", "--desc"]) == 0
    out = capsys.readouterr().out
    assert out.index("r1") < out.index("r2") and " c " not in out  # r1's final loss is the higher


def test_runs_whose_values_differ_in_type_or_are_missing_are_listed(tmp_path, capsys):
    """A config value that is a number in one run and text in another, a run without a seed or a logged
    value, a value beyond 64 bits: each column shows them all (text where the runs' types differ)."""
    root = tmp_path / "wh"
    for run_id, config, seed, loss in (
        ("a", {"x": 1, "big": 2**70}, 0, 1.5),
        ("b", {"x": "one", "big": 1}, None, None),
    ):
        with layerlake.track(
            suite="s", model_name="m", run_id=run_id, warehouse=root, seed=seed, quiet=True, config=config
        ) as run:
            if loss is not None:
                run.log(0, loss=loss)
    assert main(["runs", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "config.x" in out and " one " in out and str(2**70) in out and "1.5" in out
    assert main(["runs", "--root", str(root), "--config"]) == 0


def test_a_wrong_filter_names_the_columns(source, capsys):
    assert main(["runs", "--root", str(source), "--filter", "lrr > 1"]) == 2
    err = capsys.readouterr().err
    assert "no column 'lrr'" in err and "Traceback" not in err
    for empty in ("lr >", "status = "):  # matched nothing, silently, with exit 0
        assert main(["runs", "--root", str(source), "--filter", empty]) == 2
        assert "has no value after" in capsys.readouterr().err
    assert main(["runs", "--root", str(source), "--filter", "status = ''"]) == 0  # an empty text, asked for
    capsys.readouterr()
    for unordered, holds in (
        ("lr < nan", "holds numbers"),
        ("lr > ''", "holds numbers"),
        ("started_at > abc", "holds times"),
    ):
        assert main(["runs", "--root", str(source), "--filter", unordered]) == 2  # matched all or none
        assert holds in capsys.readouterr().err
    con = layerlake.connect(source)
    (last,) = con.sql("select max(started_at) + interval 1 second from runs").fetchall()[0]
    con.close()
    later = last.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")  # a space, not ISO's T
    assert main(["runs", "--root", str(source), "--filter", f"started_at < {later}"]) == 0
    out = capsys.readouterr().out  # every run (a filter that leaves some out says "N of 3 runs")
    assert "3 runs in" in out and "of 3 runs" not in out  # compared as times: 'T' sorts after ' ' as text
    assert main(["runs", "--root", str(source), "--filter", "started_at < 2000-01-01"]) == 0
    assert "0 of 3 runs" in capsys.readouterr().out
    assert main(["runs", "--root", str(source), "--filter", "lr 3"]) == 2
    assert "column op value" in capsys.readouterr().err


def test_tags_and_notes_show_in_sql_and_in_the_listing(root, capsys):
    assert main(["runs", "tag", "r1", "group=baseline", "verdict=good", "--root", str(root)]) == 0
    assert main(["runs", "tag", "r1", "verdict=best", "--remove", "group", "--root", str(root)]) == 0
    assert "tags verdict=best" in capsys.readouterr().out
    assert main(["runs", "note", "r1", "loss spikes at step 2", "--root", str(root)]) == 0
    assert main(["runs", "note", "r1", "second look: fine", "--root", str(root)]) == 0
    con = layerlake.connect(root)
    assert con.execute("select run_id, key, value from run_tags").fetchall() == [("r1", "verdict", "best")]
    notes = con.execute("select note from run_notes where run_id = 'r1' order by noted_at").fetchall()
    assert notes == [("loss spikes at step 2",), ("second look: fine",)]
    con.close()
    capsys.readouterr()
    assert main(["runs", "--root", str(root), "--filter", "verdict = best"]) == 0
    out = capsys.readouterr().out
    assert "tag.verdict" in out and "1 of 3 runs" in out
    assert check(["--root", str(root)]) == 0


def test_the_listing_shows_runs_that_differ_in_what_they_hold(tmp_path, capsys):
    """A config value that is a number in one run and text in another, a run without it, a run that
    logged nothing: each column is typed from all its values, never from the first run's."""
    root = tmp_path / "wh"
    store = Warehouse(root)
    for run_id, config in (("a", {"lr": 0.001}), ("b", {"lr": "auto"}), ("c", {})):
        begin_run(store, new_run(run_id, "s", "m", RunKind.train, config=config))
    loss = pa.Table.from_pylist(
        [{"step": 0, "name": "loss", "value": 2.5, "logged_at": datetime.now(timezone.utc), "rank": None}],
        schema=schema.SCALARS.arrow_schema(),
    )
    store.commit("scalars.a.0", "s", "m", {"scalars": loss}, {"kind": "scalars", "block": 0}, run_id="a")
    assert main(["runs", "--root", str(root)]) == 0
    rows = {line.split()[1]: line for line in capsys.readouterr().out.splitlines() if line.startswith("│")}
    assert "0.001" in rows["a"] and "2.5" in rows["a"] and "auto" in rows["b"]
    assert main(["runs", "--root", str(root), "--filter", "lr = auto"]) == 0
    assert "1 of 3 runs" in capsys.readouterr().out


def test_tag_errors_are_clear(root, capsys):
    assert main(["runs", "tag", "r9", "a=b", "--root", str(root)]) == 2
    assert "run 'r9' is not in the warehouse" in capsys.readouterr().err
    assert main(["runs", "tag", "r1", "no-equals", "--root", str(root)]) == 2
    assert "has no value" in capsys.readouterr().err
    assert main(["runs", "tag", "r1", "bad key=x", "--root", str(root)]) == 2
    assert "is not a name" in capsys.readouterr().err
    assert main(["runs", "tag", "r1", "--remove", "nothing", "--root", str(root)]) == 2
    assert "has no tag 'nothing'" in capsys.readouterr().err
    assert main(["runs", "note", "r1", "  ", "--root", str(root)]) == 2
    assert "must hold some text" in capsys.readouterr().err


def test_delete_dry_run_says_what_would_go_and_changes_nothing(root, capsys):
    before, lines = content(root), (root / "_manifest" / "commits.jsonl").read_bytes()
    assert main(["runs", "delete", "r1", "--dry-run", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "would delete: run r1" in out and "4 checkpoints" in out and "1 runs" in out and "dry run" in out
    assert content(root) == before and (root / "_manifest" / "commits.jsonl").read_bytes() == lines


def test_delete_removes_the_run_from_every_table_and_nothing_else(root, capsys):
    before = run_rows(root)
    assert main(["runs", "tag", "r1", "x=1", "--root", str(root)]) == 0
    assert main(["runs", "delete", "r1", "--root", str(root)]) == 0
    assert "deleted: run r1" in capsys.readouterr().out
    after = run_rows(root)
    assert "r1" not in after and after == {k: v for k, v in before.items() if k != "r1"}
    assert check(["--root", str(root)]) == 0
    assert main(["runs", "delete", "r1", "--root", str(root)]) == 2  # gone: named as unknown
    assert "not in the warehouse" in capsys.readouterr().err
    # the run id is free again: a new run of that name starts cleanly
    with layerlake.track(suite="s", model_name="m", run_id="r1", warehouse=root, quiet=True) as run:
        run.log(0, loss=1.0)
    assert run_rows(root)["r1"] == 2  # its row in runs and one logged value


def test_archive_hides_the_run_and_restore_shows_it_again(root, capsys):
    before = content(root)
    assert main(["runs", "archive", "r2", "--dry-run", "--root", str(root)]) == 0
    assert content(root) == before
    assert main(["runs", "archive", "r2", "--root", str(root)]) == 0
    assert "r2" not in run_rows(root) and set(run_rows(root)) == {"r1", "c"}
    capsys.readouterr()
    assert main(["runs", "--archived", "--root", str(root)]) == 0
    assert "r2" in capsys.readouterr().out
    assert main(["runs", "tag", "r2", "a=b", "--root", str(root)]) == 2  # archived: restore it first
    assert "is archived" in capsys.readouterr().err
    compact(root)  # compaction keeps an archived run archived
    assert "r2" not in run_rows(root)
    assert main(["runs", "restore", "r2", "--root", str(root)]) == 0
    assert content(root) == before
    assert check(["--root", str(root)]) == 0


def test_a_tracked_run_does_not_bring_an_archived_run_back(root):
    """Every track() start marks dead 'running' runs killed: an archived one must stay as it is."""
    store = Warehouse(root)
    from layerlake.warehouse.runs import commit_run, committed_run

    ghost = committed_run(store, "c")
    import dataclasses

    from layerlake.warehouse.runs import RunStatus

    commit_run(store, dataclasses.replace(ghost, status=RunStatus.running, pid=2**22 + 12345, ended_at=None))
    assert main(["runs", "archive", "c", "--root", str(root)]) == 0
    with layerlake.track(suite="s", model_name="m", run_id="new", warehouse=root, quiet=True) as run:
        run.log(0, loss=1.0)
    assert "c" not in run_rows(root)


DELETER = """
import sys
from layerlake.warehouse import run_admin
from layerlake.warehouse.writer import Warehouse
store = Warehouse(sys.argv[1], create=False)
print("start", flush=True)
run_admin.delete(store, ["r1"])
print("done", flush=True)
"""


@pytest.fixture(scope="module")
def compacted(tmp_path_factory) -> tuple[Path, dict, dict]:
    """Runs of many small tasks, compacted into files shared between runs (so a delete rewrites files
    before its manifest line): the content before and after r1 is deleted."""
    root = make_warehouse(tmp_path_factory.mktemp("compacted") / "wh", steps=30)
    compact(root, small_bytes=1 << 30, target_bytes=1 << 30)
    before = content(root)
    done = tmp_path_factory.mktemp("deleted") / "wh"
    shutil.copytree(root, done)
    from layerlake.warehouse import run_admin

    run_admin.delete(Warehouse(done), ["r1"])
    return root, before, content(done)


@pytest.mark.parametrize("delay", [0.0, 0.02, 0.05, 0.1, 0.2])
def test_sigkill_during_delete_leaves_the_run_whole_or_gone(tmp_path, compacted, delay):
    source, before, after = compacted
    assert before != after and any("'r1'" in row for rows in before.values() for row in rows)
    root = tmp_path / "wh"
    shutil.copytree(source, root)
    script = tmp_path / "deleter.py"
    script.write_text(DELETER)
    job = subprocess.Popen([sys.executable, str(script), str(root)], stdout=subprocess.PIPE, text=True)
    assert job.stdout.readline().strip() == "start"
    time.sleep(delay)
    job.send_signal(signal.SIGKILL)
    job.wait()
    seen = content(root)
    assert seen in (before, after), "a killed delete left part of the run"
    # whole; files the killed writer was staging may remain (check names them, the next writer removes them)
    assert check(["--root", str(root), "--allow", "staging_leftovers"]) == 0
    if seen == before:  # the next delete does the work
        assert main(["runs", "delete", "r1", "--root", str(root)]) == 0
        assert content(root) == after
    assert check(["--root", str(root)]) == 0


def test_archiving_a_compacted_run_hides_exactly_its_rows(tmp_path, compacted):
    """Its rows share files with another run's: archived, the views show what a delete would leave;
    restored, everything as before (the shared files were written again without the run's rows)."""
    source, before, after = compacted
    root = tmp_path / "wh"
    shutil.copytree(source, root)
    assert any(f.shared for e in Warehouse(root).committed().values() if e.run_id == "r1" for f in e.files)
    assert main(["runs", "archive", "r1", "--root", str(root)]) == 0
    assert content(root) == after
    compact(root, small_bytes=1 << 30, target_bytes=1 << 30)
    assert content(root) == after
    assert main(["runs", "restore", "r1", "--root", str(root)]) == 0
    assert content(root) == before
    assert check(["--root", str(root), "--verify-files"]) == 0


WORKLOAD = Path(__file__).parent / "track_workload.py"


@pytest.fixture
def training(tmp_path):
    """``start(run_id)``: a real process tracking run ``run_id`` (a tiny model, a snapshot per step) that
    holds after step 2's snapshot is committed until the test lets it go (``go``), then ends its run."""
    jobs = []

    def start(run_id: str) -> subprocess.Popen:
        job = subprocess.Popen(
            [sys.executable, str(WORKLOAD), str(tmp_path / "wh"), run_id, "--steps", "5", "--hold-at", "2"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        jobs.append(job)
        for line in job.stdout:
            if line.strip() == "holding":
                return job
        raise AssertionError(f"the tracking process ended before it held: {job.stderr.read()}")

    yield start
    for job in jobs:
        if job.poll() is None:
            job.kill()
            job.wait()


def go(job: subprocess.Popen) -> str:
    """Let a held tracking process train on to its end; its stderr."""
    out, err = job.communicate("\n", timeout=300)
    assert job.returncode == 0 and "done" in out, err
    return err


def snapshots(root: Path, run_id: str) -> list[int]:
    con = layerlake.connect(root)
    try:
        found = con.execute(
            "select distinct step from checkpoints where run_id = $r order by 1", {"r": run_id}
        )
        return [step for (step,) in found.fetchall()]
    finally:
        con.close()


def test_a_run_still_training_cannot_be_deleted_or_archived(tmp_path, training, capsys):
    """Its process would go on committing: a deleted run came back `finished` with its later snapshots
    only, an archived one ended half shown. Refused while its process lives, whatever --force says;
    once it has ended, archived whole."""
    root = tmp_path / "wh"
    job = training("live")
    before = (root / "_manifest" / "commits.jsonl").read_bytes()
    for args in (["delete", "live"], ["archive", "live"], ["archive", "live", "--force"]):
        assert main(["runs", *args, "--root", str(root)]) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert (
            "'live' is still running" in err
            and f"process {job.pid} on" in err
            and "wait until it ends" in err
        )
    assert (root / "_manifest" / "commits.jsonl").read_bytes() == before
    go(job)
    assert snapshots(root, "live") == [0, 1, 2, 3, 4]
    assert main(["runs", "archive", "live", "--root", str(root)]) == 0
    assert "live" not in run_rows(root)
    capsys.readouterr()
    assert main(["runs", "--archived", "--root", str(root)]) == 0
    assert "live" in capsys.readouterr().out
    assert check(["--root", str(root)]) == 0


@pytest.mark.parametrize("verb", ["archive", "delete"])
def test_a_training_process_stores_nothing_more_once_its_run_is_archived_or_deleted(
    tmp_path, training, capsys, monkeypatch, verb
):
    """A run recorded by a process of another host cannot be checked: refused without --force, taken with
    it. Should that process still be training, its next commit finds its run gone (asked under the writer
    lock) and stores nothing more, its end included: a deleted run does not come back, an archived one
    stays archived whole."""
    from layerlake.warehouse import run_admin

    root = tmp_path / "wh"
    job = training("far")
    monkeypatch.setattr(run_admin, "process_alive", lambda host, pid: None)  # as if of another host
    assert main(["runs", verb, "far", "--root", str(root)]) == 2
    assert "cannot be checked from" in capsys.readouterr().err
    assert main(["runs", verb, "far", "--force", "--root", str(root)]) == 0
    err = " ".join(go(job).split())
    assert f"run far was {verb}d (" in err and "nothing more of it is stored (training goes on)" in err
    assert "far" not in run_rows(root)
    con = layerlake.connect(root)
    assert con.sql("select count(*) from failures where run_id = 'far'").fetchall() == [(0,)]
    con.close()
    capsys.readouterr()
    assert main(["runs", "--archived", "--root", str(root)]) == 0
    assert ("far" in capsys.readouterr().out) == (verb == "archive")
    if verb == "archive":  # whole: restored, it holds what it held when archived (its end never came)
        assert main(["runs", "restore", "far", "--root", str(root)]) == 0
        assert snapshots(root, "far") == [0, 1, 2]
        assert main(["runs", "--mark-killed", "--root", str(root)]) == 0
    assert check(["--root", str(root)]) == 0


def test_a_commit_that_would_leave_a_run_partly_archived_is_refused(root):
    """The writer's own rule, under the lock every commit takes, so no race with `runs archive` passes it:
    a task shown beside an archived run's hidden ones (a write into it), or hidden beside a shown run's."""
    from layerlake.warehouse.errors import WarehouseError

    assert main(["runs", "archive", "r2", "--root", str(root)]) == 0
    store = Warehouse(root)
    hidden, lines = content(root), (root / "_manifest" / "commits.jsonl").read_bytes()
    with pytest.raises(WarehouseError, match="run 'r2' is archived .* partly archived") as refused:
        store.commit("r2-ck9", "s", "m", checkpoint("m", 9), {"step": 9}, run_id="r2")
    assert "layerlake runs restore r2" in refused.value.fix
    with pytest.raises(WarehouseError, match="run 'r1' is not archived .* partly archived"):
        store.commit("r1-ck9", "s", "m", checkpoint("m", 9), {"step": 9, "archived": True}, run_id="r1")
    assert (root / "_manifest" / "commits.jsonl").read_bytes() == lines and content(root) == hidden
    assert not list((root / "_staging").iterdir())
    assert main(["runs", "restore", "r2", "--root", str(root)]) == 0  # the whole run at once: taken
    store.commit("r2-ck9", "s", "m", checkpoint("m", 9), {"step": 9}, run_id="r2")
    assert main(["runs", "archive", "r2", "--root", str(root)]) == 0
    assert main(["runs", "delete", "r2", "--root", str(root)]) == 0
    assert "r2" not in run_rows(root) and store.archived_runs() == set()
    assert check(["--root", str(root)]) == 0


def test_tracking_into_an_archived_run_is_refused_until_it_is_restored(root):
    """`track(resume=True)` on an archived run committed its new tasks shown beside its hidden ones: refused
    before anything is written (the run's row, its probe's), naming the fix; restored, it resumes."""
    from layerlake.warehouse.errors import WarehouseError

    assert main(["runs", "archive", "r1", "--root", str(root)]) == 0
    lines = (root / "_manifest" / "commits.jsonl").read_bytes()
    for resume, doing in ((True, "cannot resume it"), (False, "cannot start a new run under its id")):
        with pytest.raises(WarehouseError, match=f"run r1 is archived in .*{doing}") as refused:
            layerlake.track(suite="s", model_name="m", run_id="r1", warehouse=root, resume=resume, quiet=True)
        assert f"layerlake runs restore r1 --root {root}" in refused.value.fix
        assert "start another run_id" in refused.value.fix
    assert (root / "_manifest" / "commits.jsonl").read_bytes() == lines
    assert main(["runs", "restore", "r1", "--root", str(root)]) == 0
    with layerlake.track(
        suite="s", model_name="m", run_id="r1", warehouse=root, resume=True, quiet=True
    ) as run:
        run.log(9, loss=0.5)
    assert check(["--root", str(root)]) == 0
