"""Interrupted maintenance finishes by itself: ``layerlake compact`` and ``layerlake migrate`` killed with
SIGKILL at each step (files staged, files placed, manifest switched); the next command that opens the
warehouse finishes or rolls back the step and says so in one line, ``check`` names it, and every row is
where it was."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_compact import content, many_small_tasks
from test_gram_storage import as_schema_2
from test_gram_storage import build as build_schema_3

from layerlake.cli.main import main
from layerlake.warehouse import schema
from layerlake.warehouse.journal import journal_path
from layerlake.warehouse.writer import Warehouse

REPO = Path(__file__).resolve().parent.parent

# Runs a real `layerlake <command>` that stops at one step and waits there to be killed. Each point
# wraps the writer's own function that begins the next step, so the process is killed exactly between.
KILLABLE = r"""
import sys, time
from layerlake.warehouse import journal, writer

point, command, root = sys.argv[1:4]

def pause():
    print("paused", flush=True)
    time.sleep(600)

place = writer.Warehouse.place
if point == "staged":  # every new file written to staging, none moved into place
    writer.Warehouse.place = lambda self, staged: pause()
elif point == "placed":  # new files in place, the manifest not switched
    def placed(self, staged):
        place(self, staged)
        pause()
    writer.Warehouse.place = placed
elif point == "switched":  # the manifest switched, the journal not yet removed
    journal.end = lambda root: pause()
from layerlake.cli.main import main
sys.exit(main([command, "--root", root]))
"""

POINTS = ("staged", "placed", "switched")


def killed(root: Path, command: str, point: str) -> None:
    """Run ``layerlake <command>`` on ``root`` until it reaches ``point``, then SIGKILL it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLABLE, point, command, str(root)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert line.strip() == "paused", proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert journal_path(root).exists()  # killed mid-step: its journal is left


@pytest.fixture(scope="module")
def small_files(tmp_path_factory) -> tuple[Path, dict]:
    """A warehouse of 12 small tasks (what tracking leaves before its compaction), and its views."""
    root = tmp_path_factory.mktemp("uncompacted") / "wh"
    many_small_tasks(root, n=12)
    return root, content(root)


@pytest.fixture(scope="module")
def schema_2(tmp_path_factory) -> tuple[Path, dict]:
    """A compacted warehouse as schema 2 wrote it, and its views as schema 3 shows them."""
    from layerlake.warehouse.compact import compact

    root = tmp_path_factory.mktemp("schema2") / "wh"
    build_schema_3(root)
    compact(root)
    rows = content(root)
    as_schema_2(root)
    return root, rows


def one_line(err: str, command: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("layerlake:")]
    assert len(lines) == 1 and f"`layerlake {command}`" in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("point", POINTS)
def test_a_killed_compact_is_finished_or_rolled_back_by_the_next_command(
    point, small_files, tmp_path, capsys
):
    source, rows = small_files
    root = tmp_path / "wh"
    shutil.copytree(source, root)
    listed_before = Warehouse(root).listed_paths()
    killed(root, "compact", point)
    other = tmp_path / "copy"
    shutil.copytree(root, other)

    assert main(["check", "--root", str(root)]) == 0  # check names it, and passes: nothing is lost
    out = capsys.readouterr().out
    assert "WARN interrupted_maintenance" in out and "layerlake compact" in out, out
    words = " ".join(out.replace("│", " ").split())  # the table's cells wrap at any word
    assert ("is complete" in words) == (point == "switched")

    assert main(["sql", "--root", str(other), "select count(*) from sketches"]) == 0  # any command
    one_line(capsys.readouterr().err, "compact")

    for folder in (root, other):
        assert not journal_path(folder).exists()
        assert content(folder) == rows
        assert list((folder / "_staging").iterdir()) == []
        store = Warehouse(folder)
        unlisted = {p.relative_to(folder).as_posix() for p in store.orphans(grace_s=0)}
        if point == "switched":  # compacted: the small files wait for gc's grace period
            assert unlisted == listed_before and store.listed_paths() != listed_before
        else:  # rolled back: the files it placed are gone, the small files still listed
            assert unlisted == set() and store.listed_paths() == listed_before
    assert main(["check", "--root", str(root)]) == 0
    assert "PASS interrupted_maintenance" in capsys.readouterr().out
    assert main(["compact", "--root", str(other)]) == 0  # and compaction runs to its end after
    assert content(other) == rows


@pytest.mark.parametrize("point", POINTS)
def test_a_killed_migrate_is_finished_or_rolled_back_by_the_next_command(point, schema_2, tmp_path, capsys):
    source, rows = schema_2
    root = tmp_path / "wh"
    shutil.copytree(source, root)
    killed(root, "migrate", point)
    other = tmp_path / "copy"
    shutil.copytree(root, other)
    done = point == "switched"  # the manifest line of the new version is written: the migration is done

    assert main(["check", "--root", str(root)]) == (0 if done else 1)
    out = capsys.readouterr().out
    assert "WARN interrupted_maintenance" in out and "layerlake migrate" in out, out
    if not done:  # rolled back: still schema 2, and check says which command to run
        assert "FAIL schema_version" in out and "run `layerlake migrate --root" in " ".join(out.split())

    code = main(["sql", "--root", str(other), "select count(*) from sketches"])
    err = capsys.readouterr().err
    one_line(err, "migrate")
    if done:
        assert code == 0
    else:  # the one line of the rollback, then the error naming the command to run
        assert code == 2 and "fix: run `layerlake migrate" in err

    for folder in (root, other):
        assert not journal_path(folder).exists() and list((folder / "_staging").iterdir()) == []
        assert main(["migrate", "--root", str(folder)]) == 0
        assert {e.schema_version for e in Warehouse(folder).committed().values()} == {schema.SCHEMA_VERSION}
        assert content(folder) == rows
        assert main(["check", "--root", str(folder)]) == 0
    capsys.readouterr()


@contextmanager
def read_only(folder: Path) -> Iterator[Path]:
    """``folder`` as a process that cannot write it sees it: a read-only bind mount when running as root
    (root writes through permissions), the write permissions taken away otherwise."""
    if os.geteuid() != 0:
        folders = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
        for f in folders:
            f.chmod(0o555)
        try:
            yield folder
        finally:
            for f in folders:
                f.chmod(0o755)
        return
    view = folder.parent / f"{folder.name}-read-only"
    view.mkdir()
    mounted = subprocess.run(["mount", "--bind", str(folder), str(view)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot make a read-only view as root here (mount: {mounted.stderr.strip()})")
    try:
        remount = subprocess.run(
            ["mount", "-o", "remount,ro,bind", str(view)], capture_output=True, text=True
        )
        if remount.returncode != 0:
            pytest.skip(f"cannot remount read-only here (mount: {remount.stderr.strip()})")
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=False)


def test_a_reader_that_cannot_write_says_which_command_to_run(small_files, tmp_path, capsys):
    source, rows = small_files
    root = tmp_path / "wh"
    shutil.copytree(source, root)
    killed(root, "compact", "placed")
    with read_only(root) as view:
        assert main(["sql", "--root", str(view), "select count(*) from sketches"]) == 0
        err = capsys.readouterr().err
        one_line(err, "compact")
        assert "run `layerlake compact` where the warehouse can be written" in err
        assert content(view) == rows
        assert main(["check", "--root", str(view)]) == 1
        assert "FAIL interrupted_maintenance" in capsys.readouterr().out
    assert journal_path(root).exists()  # nothing was changed through the read-only view
    assert main(["check", "--root", str(root)]) == 0  # where it can be written, it is rolled back


def test_an_unreadable_journal_is_an_error_naming_it_and_the_fix(small_files, tmp_path, capsys):
    source, rows = small_files
    root = tmp_path / "wh"
    shutil.copytree(source, root)
    journal_path(root).write_text("{not json")
    before = (root / "_manifest" / "commits.jsonl").read_bytes()
    assert main(["sql", "--root", str(root), "select count(*) from sketches"]) == 2
    err = capsys.readouterr().err
    assert "maintenance journal" in err and str(journal_path(root)) in err and "fix: if no" in err
    assert "Traceback" not in err
    assert (root / "_manifest" / "commits.jsonl").read_bytes() == before and journal_path(root).exists()
    journal_path(root).unlink()  # the fix it names
    assert main(["check", "--root", str(root)]) == 0
    assert content(root) == rows
