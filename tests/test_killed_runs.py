"""A run whose process is gone shows as killed to every reader (connect, `runs`, the UI, recipes) without
anything being written; `check` names it with the command that records it, and that command does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import layerlake
from layerlake.cli.main import main
from layerlake.ui.app import UiApp
from layerlake.warehouse.runs import RunKind, RunStatus, commit_run, committed_run, new_run
from layerlake.warehouse.writer import Warehouse


def manifest(root: Path) -> bytes:
    return (root / "_manifest" / "commits.jsonl").read_bytes()


def running_run(root: Path, run_id: str, process: subprocess.Popen) -> None:
    """A run committed as running by ``process`` (a real process of this host, alive or ended)."""
    commit_run(Warehouse(root), new_run(run_id, "s", "m", RunKind.train, {"lr": 0.01}, pid=process.pid))


@pytest.fixture
def sleeper():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield process
    if process.poll() is None:
        process.kill()
        process.wait()


def status(con, run_id: str) -> str:
    return con.sql("select status from runs where run_id = $r", params={"r": run_id}).fetchall()[0][0]


def test_readers_show_a_dead_process_run_as_killed_and_write_nothing(tmp_path, sleeper, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # the finding's text on one line
    root = tmp_path / "warehouse"
    running_run(root, "alive", sleeper)
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    running_run(root, "dead", ended)
    before = manifest(root)

    con = layerlake.connect(root)
    assert status(con, "alive") == "running" and status(con, "dead") == "killed"
    error = con.sql("select error from runs where run_id = 'dead'").fetchall()[0][0]
    assert "layerlake runs --mark-killed" in error
    con.close()
    assert main(["runs", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "killed" in out and "process gone" not in out
    assert committed_run(Warehouse(root), "dead").status == RunStatus.running  # nothing recorded ...
    assert manifest(root) == before  # ... nor written by any reader

    # check names it, with the command that records it; that command does, and check passes then
    assert main(["check", "--root", str(root)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "killed_runs" in out and f"layerlake runs --mark-killed --root {root}" in out
    assert main(["runs", "--root", str(root), "--mark-killed"]) == 0
    assert "recorded 1 run(s) as killed: dead" in capsys.readouterr().out
    assert committed_run(Warehouse(root), "dead").status == RunStatus.killed
    assert committed_run(Warehouse(root), "alive").status == RunStatus.running
    main(["check", "--root", str(root)])
    assert "PASS killed_runs" in capsys.readouterr().out


def test_the_ui_shows_a_run_killed_once_its_process_dies(tmp_path, sleeper):
    root = tmp_path / "warehouse"
    running_run(root, "job", sleeper)
    app = UiApp(root)

    def shown() -> dict[str, str]:
        body = json.loads(app.respond("GET", "/api/overview").body)
        return {r["run_id"]: r["status"] for r in body["runs"]}

    assert shown() == {"job": "running"}
    runs = json.loads(app.respond("GET", "/api/runs").body)["runs"]
    assert runs[0]["status"] == "running" and "." not in runs[0]["started_at"]  # to the second
    sleeper.kill()
    sleeper.wait()
    assert shown() == {"job": "killed"}  # no restart, no write: the next request sees it
    assert json.loads(app.respond("GET", "/api/runs").body)["runs"][0]["status"] == "killed"
