"""``layerlake sql`` output that once ended in a traceback, through the real command in a subprocess
where a pipe or a signal is involved: a blob column as CSV or JSON, two columns of one name in every
format, a reader that leaves (``| head -1``), Ctrl-C (SIGINT to the process, or to its group as a
terminal sends it) while a statement runs or its rows stream. None leaves a traceback or a worker
process behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from layerlake.cli.main import main
from layerlake.warehouse.synthetic import checkpoint_tables
from layerlake.warehouse.writer import Warehouse

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    store = Warehouse(tmp_path_factory.mktemp("output") / "wh")
    tables = checkpoint_tables("m", 0, {(0, "mlp_out"): np.eye(3)}, {(0, "dense"): [4.0, 1.0]}, d=4)
    store.commit("t0", "s", "m", tables, {"step": 0})
    return str(store.root)


def test_a_blob_column_is_hex_text_in_csv_and_json(root, capsys):
    blob = "select gram_bytes, [gram_bytes] as listed, {'b': gram_bytes} as nested from sketches limit 1"
    assert main(["sql", blob, "--root", root, "--format", "csv"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header == '"gram_bytes","listed","nested"' and row.startswith('"\\x0000803f')
    assert main(["sql", blob, "--root", root, "--format", "json"]) == 0
    (value,) = json.loads(capsys.readouterr().out)
    assert value["gram_bytes"].startswith("\\x0000803f") and value["listed"] == [value["gram_bytes"]]
    assert main(["sql", blob, "--root", root]) == 0
    assert "\\x0000803f" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["table", "csv", "json", "parquet"])
def test_two_columns_of_one_name_are_told_apart_as_duckdb_does(root, tmp_path, capsys, fmt):
    statement = "select 1 as a, 2 as a, 3 as a_1, 4 as a"
    output = tmp_path / "out.parquet"
    args = ["--output", str(output)] if fmt == "parquet" else ["--format", fmt]
    assert main(["sql", statement, "--root", root, *args]) == 0
    out = capsys.readouterr().out
    names = ["a", "a_1", "a_1_1", "a_2"]  # DuckDB's CREATE TABLE AS names them so
    if fmt == "json":
        assert json.loads(out) == [dict(zip(names, [1, 2, 3, 4], strict=True))]
    elif fmt == "csv":
        assert out.splitlines() == [",".join(f'"{n}"' for n in names), "1,2,3,4"]
    elif fmt == "parquet":
        assert pq.read_table(output).to_pylist() == [dict(zip(names, [1, 2, 3, 4], strict=True))]
    else:
        assert all(n in out for n in names)


def layerlake(*argv: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "layerlake.cli", *argv], cwd=REPO, stderr=subprocess.PIPE, **kwargs
    )


def children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    """Poll ``condition`` until it holds (a hard bound for a test that would otherwise hang)."""
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"{what} did not happen within {timeout} s"
        time.sleep(0.1)


def test_a_reader_that_leaves_ends_the_command_quietly(root):
    proc = layerlake("sql", "select range from range(100000000)", "--root", root, "--format", "csv",
                     "--timeout", "0", stdout=subprocess.PIPE)  # fmt: skip
    assert proc.stdout.readline() == b'"range"\n'
    workers = children(proc.pid)
    proc.stdout.close()  # `| head -1`
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 141 and b"Traceback" not in err, err.decode()
    assert not any(alive(w) for w in workers)


def foreground_sigint() -> None:
    """In the child before it runs the command: Ctrl-C's default disposition, as a terminal's foreground
    command has it. A suite started in the background (``make test &``, ``nohup``) runs with SIGINT
    ignored, which its children inherit, and Python then keeps ignoring it, as a background job should."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def end_or_kill(proc: subprocess.Popen, timeout: float) -> bytes:
    """The command's stderr once it ended, its stdout read and dropped as it comes (a stream that did not
    stop would otherwise fill the test's memory); a command still running after ``timeout`` is a failure
    that says what its signals were (from /proc), and it is killed with its workers, never left running
    for the next tests."""
    drains = [threading.Thread(target=drain, args=(stream,), daemon=True) for stream in (proc.stdout,)]
    for thread in drains:
        thread.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        signals = [line for line in status.splitlines() if line.startswith(("Sig", "Shd"))]
        for pid in [*children(proc.pid), proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"the command did not end within {timeout} s of Ctrl-C: {signals}") from None
    finally:
        for thread in drains:
            thread.join(timeout=30)
    return proc.stderr.read()


def drain(stream) -> None:
    while stream is not None and stream.read(1 << 16):
        pass


@pytest.mark.parametrize("target", ["process", "group"])
@pytest.mark.parametrize("when", ["running", "streaming"])
def test_ctrl_c_ends_the_command_and_its_worker_without_a_traceback(root, target, when):
    statement = {
        "running": "select count(*) from range(1000000000000) a, range(1000) b",
        "streaming": "select range from range(1000000000000)",
    }[when]
    proc = layerlake("sql", statement, "--root", root, "--format", "csv", "--timeout", "0",
                     stdout=subprocess.PIPE, start_new_session=True, preexec_fn=foreground_sigint)  # fmt: skip
    if when == "streaming":
        assert proc.stdout.readline() == b'"range"\n'
    wait_for(lambda: children(proc.pid), "a worker")
    workers = children(proc.pid)
    time.sleep(0.5)  # inside the statement
    if target == "group":
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    else:
        proc.send_signal(signal.SIGINT)
    err = end_or_kill(proc, timeout=120)
    assert proc.returncode == 130 and b"interrupted" in err and b"Traceback" not in err, err.decode()
    wait_for(lambda: not any(alive(w) for w in workers), "the worker's end", timeout=30)


def test_a_forking_sandbox_refuses_a_write_and_keeps_the_worker_it_forked_first(root):
    """``layerlake sql``'s sandbox forks its worker before the statement is checked (the check opens a
    DuckDB connection, whose threads a later fork would copy); a refused statement gives that worker back."""
    from layerlake.warehouse.errors import QueryError
    from layerlake.warehouse.sandbox import Sandbox

    with Sandbox(Path(root), start="fork", max_workers=1) as box:
        with pytest.raises(QueryError, match="read-only"), box.query("drop table sketches"):
            pass
        (worker,) = box._idle  # forked, kept after the refusal
        with box.query("select count(*) as n from sketches") as result:
            assert result.read_all().to_pylist() == [{"n": 1}]
        assert box._idle == [worker] and worker.alive


FORKSERVER_SIGINT = """
import signal, sys
from multiprocessing import forkserver
signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's foreground job has it
from layerlake.warehouse.sandbox import Sandbox
sandbox = Sandbox(None, (sys.argv[1],))
pid = forkserver._forkserver._forkserver_pid
status = open(f"/proc/{pid}/status").read()  # read at once: its preload (seconds) is still importing
ignored = int(next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16)
print("ignored" if ignored & (1 << (signal.SIGINT - 1)) else "caught")
print("parent", "default" if signal.getsignal(signal.SIGINT) is signal.default_int_handler else "changed")
sandbox.close()
"""


def test_the_fork_server_of_the_sql_workers_ignores_ctrl_c_from_its_start(root):
    # Ctrl-C on `layerlake ui` or `sql` while the fork server imported its preload printed the server's
    # KeyboardInterrupt traceback: it must start with SIGINT ignored, and the parent keep its handler
    done = subprocess.run([sys.executable, "-c", FORKSERVER_SIGINT, root], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ignored", "parent", "default"]
