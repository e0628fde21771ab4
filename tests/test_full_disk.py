"""A full disk, for real: a tracked run keeps training when its commits fail, records its failures and
ends with one line, never a traceback; ``layerlake compact`` says what failed and changes nothing.

Two real limits: RLIMIT_FSIZE in a subprocess (writes past the size fail with EFBIG, which the writer
treats as a full disk), and, when running as root where ``mount`` works, a small tmpfs that fills up
(ENOSPC). Nothing is simulated inside the process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_compact import content, many_small_tasks

from layerlake.cli.main import main
from layerlake.warehouse.writer import Warehouse

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

# A tiny GPT-NeoX trained through the tracker, a snapshot at every step; ``limit`` (bytes) caps every
# file the process writes from step ``since`` on (0: no cap; the disk itself may be small). What could
# not be stored is printed last, one line each.
TRAIN = r"""
import resource, sys
sys.path.insert(0, sys.argv[3])
import torch, tiny_models, layerlake

root, limit, since, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[4]), 8
model = tiny_models.neox(seed=0).train()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
probe = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 18], [19, 20, 21, 22, 23, 24]]
batches = torch.Generator().manual_seed(0)
with layerlake.track(model, suite="full", model_name="neox", run_id="r", probe=probe, warehouse=root,
                     cadence=1) as run:
    for step in range(steps):
        if limit and step == since:
            run.wait()  # what was snapshotted before is committed
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        batch = torch.randint(0, 40, (4, 8), generator=batches)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        run.log(step, loss=loss.item())
        run.snapshot(step, model)
print(f"trained {step + 1} steps; {len(run.snapshots)} snapshots taken, {len(run.failures)} failures", flush=True)
print("\n".join(run.failures), flush=True)
"""


def train(root: Path, limit: int = 0, since: int = 0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", TRAIN, str(root), str(limit), str(TESTS), str(since)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip


def assert_ended_cleanly(done: subprocess.CompletedProcess) -> None:
    """Training went to its end, the failures were counted, and stderr ends with one summary line."""
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "trained 8 steps; 8 snapshots taken" in done.stdout, done.stdout
    assert "0 failures" not in done.stdout  # the disk did fill
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("layerlake: run r ended;") and "could not be stored" in last, done.stderr[-3000:]
    assert len([line for line in done.stderr.splitlines() if line.startswith("layerlake:")]) <= 3


def assert_readable(root: Path, capsys) -> None:
    """What was committed reads back, and every listed file matches the manifest. The only finding
    allowed is the run itself left running: its end could not be written to a full disk, and check
    names it (killed: its process is gone)."""
    capsys.readouterr()
    assert main(["sql", "--root", str(root), "select count(*) from scalars"]) == 0
    main(["check", "--root", str(root)])
    out = capsys.readouterr().out
    failing = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert all(line.startswith("FAIL killed_runs") for line in failing), out


def test_a_tracked_run_whose_file_size_limit_is_reached_trains_on_and_ends_with_one_line(tmp_path, capsys):
    root = tmp_path / "wh"
    done = train(root, limit=6000, since=3)  # 3 snapshots go in; then no file may pass 6000 bytes
    assert_ended_cleanly(done)
    assert "File too large" in done.stderr
    failed = done.stdout.splitlines()[1:]
    assert any(f.startswith("compaction:") and "File too large" in f for f in failed), done.stdout
    assert_readable(root, capsys)


@contextmanager
def small_disk(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``folder`` (root only); skipped, naming why, where it cannot be."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real small disk needs root and mount (the RLIMIT_FSIZE test covers a full disk here)")
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_tracked_run_on_a_disk_that_fills_trains_on_and_ends_with_one_line(tmp_path, capsys):
    with small_disk(tmp_path / "disk", "160k") as disk:
        root = disk / "wh"
        done = train(root)
        assert_ended_cleanly(done)
        assert "No space left on device" in done.stderr
        assert_readable(root, capsys)


def test_compact_on_a_full_disk_fails_clearly_and_changes_nothing(tmp_path, capsys):
    root = tmp_path / "wh"
    many_small_tasks(root, n=12)
    before, listed = content(root), Warehouse(root).listed_paths()
    manifest = (root / "_manifest" / "commits.jsonl").read_bytes()
    code = (
        "import resource, sys\n"
        "from layerlake.cli.main import main\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))\n"  # the merged files cannot be written
        f"sys.exit(main(['compact', '--root', {str(root)!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "File too large" in done.stderr
    assert "nothing was changed" in done.stderr and "fix: free disk space" in done.stderr
    assert (root / "_manifest" / "commits.jsonl").read_bytes() == manifest
    assert not (root / "_manifest" / "maintenance.json").exists()  # the failed step was undone at once,
    assert list((root / "_staging").iterdir()) == []  # not left for the next command to roll back
    assert content(root) == before and Warehouse(root).listed_paths() == listed
    assert Warehouse(root).orphans(grace_s=0) == []
    assert main(["check", "--root", str(root)]) == 0


def test_compact_on_a_small_disk_that_fills_fails_clearly_and_changes_nothing(tmp_path, capsys):
    with small_disk(tmp_path / "disk", "1m") as disk:
        root = disk / "wh"
        many_small_tasks(root, n=12)
        before = content(root)
        filler = disk / "filler"
        free = shutil.disk_usage(disk).free
        filler.write_bytes(b"\0" * max(0, free - 24_000))  # room for a little, not for the merged files
        assert main(["compact", "--root", str(root)]) == 2
        err = capsys.readouterr().err
        assert "No space left on device" in err and "nothing was changed" in err and "Traceback" not in err
        assert not (root / "_manifest" / "maintenance.json").exists()  # undone at once
        assert content(root) == before
        filler.unlink()
        assert main(["check", "--root", str(root)]) == 0
        assert main(["compact", "--root", str(root)]) == 0  # with room again, it goes through
        assert content(root) == before
