"""Trust, part 2: a write that fails at any step leaves exactly the old state (the manifest agreeing with
the files), leftovers of killed writers are cleaned, and an import lets nothing bad in.

Faults are injected at each step of a commit (the staging write, the rename into place, the folder
fsync, the manifest append, a torn manifest line), then a real ``ulimit -f`` and real SIGKILLs.
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_import_metrics import HEADER, ROWS, write_csv
from test_share import build_warehouse, tree_hash

from layerlake import warehouse
from layerlake.cli.main import main
from layerlake.core.hashing import sha256_file
from layerlake.warehouse import manifest as manifest_module
from layerlake.warehouse import schema
from layerlake.warehouse import writer as writer_module
from layerlake.warehouse.errors import ShareError, WarehouseError
from layerlake.warehouse.share import export_dataset, import_dataset
from layerlake.warehouse.share.layout import dataset_id
from layerlake.warehouse.synthetic import checkpoint_tables
from layerlake.warehouse.writer import HOST, Warehouse

REPO = Path(__file__).resolve().parent.parent


def views(root: Path) -> dict[str, list]:
    con = warehouse.connect(root)
    try:
        return {
            t: con.sql(f"select * exclude (run_id) from {t} order by all").fetchall()
            for t in schema.TABLES
            if t != "runs"
        }
    finally:
        con.close()


def import_metrics(root: Path, csv: Path) -> int:
    return main(["import-metrics", str(csv), "--source", "paper", "--suite", "pythia", "--root", str(root)])


def efbig(*_args, **_kwargs):
    raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))


def torn_append(path: Path, payload: dict) -> None:
    """Half of the manifest line reaches the disk, then the write fails (a full disk mid-append)."""
    line = json.dumps(payload).encode()
    with open(path, "ab") as handle:
        handle.write(line[: len(line) // 2])
    efbig()


FAULTS = {
    "staging write": (writer_module, "write_durable", efbig),
    "rename into place": (writer_module.os, "replace", efbig),
    "folder fsync": (writer_module, "fsync_dir", efbig),
    "manifest append": (manifest_module, "_append_line", efbig),
    "torn manifest line": (manifest_module, "_append_line", torn_append),
}


@pytest.mark.parametrize("step", FAULTS)
def test_a_replacement_that_fails_at_any_step_leaves_the_old_rows(step, tmp_path, monkeypatch, capsys):
    root = tmp_path / "wh"
    old_rows = write_csv(tmp_path / "old.csv")
    new_rows = write_csv(tmp_path / "new.csv", [(*r[:5], 0.125) for r in ROWS])  # changed values
    assert import_metrics(root, old_rows) == 0
    before, lines = views(root), (root / "_manifest" / "commits.jsonl").read_text()
    target, name, fault = FAULTS[step]
    with monkeypatch.context() as patch:
        patch.setattr(target, name, fault)
        assert import_metrics(root, new_rows) == 2
    err = capsys.readouterr().err
    assert "nothing was committed" in err or "could not write" in err, err
    assert views(root) == before  # exactly the old rows
    assert main(["check", "--root", str(root)]) == 0  # and the manifest agrees with the files
    assert import_metrics(root, old_rows) == 0  # the old rows are what is stored ...
    assert "unchanged" in capsys.readouterr().out
    if step != "torn manifest line":
        assert (root / "_manifest" / "commits.jsonl").read_text() == lines
    assert import_metrics(root, new_rows) == 0  # ... and the change lands once the disk has room
    assert views(root) != before and main(["check", "--root", str(root)]) == 0
    assert list((root / "_staging").iterdir()) == []


def test_an_extraction_whose_commit_fails_shows_none_of_that_checkpoint(tmp_path, monkeypatch):
    root = tmp_path / "wh"
    w = Warehouse(root)
    tables = checkpoint_tables("m", 0, {(0, "mlp_out"): np.eye(3)}, {(0, "dense"): [2.0, 1.0]}, d=4)
    w.commit("t0", "s", "m", tables, {"step": 0})
    before = views(root)
    calls = {"n": 0}
    real = manifest_module._append_line

    def fail_second(path, payload):
        calls["n"] += 1
        if calls["n"] == 2:
            efbig()
        real(path, payload)

    monkeypatch.setattr(manifest_module, "_append_line", fail_second)
    w.commit(
        "t1", "s", "m", checkpoint_tables("m", 1, {(0, "mlp_out"): np.eye(3)}, {(0, "dense"): [3.0]}, d=4), {}
    )
    with pytest.raises(WarehouseError, match="nothing was committed"):
        w.commit(
            "t2",
            "s",
            "m",
            checkpoint_tables("m", 2, {(0, "mlp_out"): np.eye(3)}, {(0, "dense"): [4.0]}, d=4),
            {},
        )
    after = views(root)
    assert len(after["sketches"]) == len(before["sketches"]) + 1  # t1 landed whole, t2 not at all
    assert main(["check", "--root", str(root)]) == 0


def test_a_share_import_that_fails_changes_nothing(tmp_path, monkeypatch):
    build_warehouse(tmp_path / "source")
    export_dataset(tmp_path / "source", tmp_path / "shared")
    local = tmp_path / "local"
    build_warehouse(local, models=("m3",), steps=(5,))
    before, before_views = tree_hash(local), views(local)
    calls = {"n": 0}
    real = writer_module.os.replace

    def fail_late(src, dst):
        calls["n"] += 1
        if calls["n"] > 5:  # some files are already in place
            efbig()
        real(src, dst)

    monkeypatch.setattr(writer_module.os, "replace", fail_late)
    with pytest.raises(WarehouseError, match="nothing was committed"):
        import_dataset(tmp_path / "shared", local)
    monkeypatch.undo()
    assert views(local) == before_views and main(["check", "--root", str(local)]) == 0
    moved = {k: v for k, v in tree_hash(local).items() if k not in before}
    assert all(not k.startswith("_staging") for k in moved)  # no leftovers; only unlisted orphans
    assert moved == {} or all(k.endswith(".parquet") for k in moved)
    assert {k: v for k, v in tree_hash(local).items() if k in before} == before


def test_a_real_file_size_limit_fails_clearly_and_keeps_the_old_rows(tmp_path):
    root = tmp_path / "wh"
    assert import_metrics(root, write_csv(tmp_path / "old.csv")) == 0
    before = views(root)
    big = [(f"m{i % 7}", s, layer, "attention.dense", "cka_scores", round(random.random(), 6))
           for i in range(7) for s in range(0, 400, 10) for layer in range(24)]  # fmt: skip
    csv = write_csv(tmp_path / "big.csv", [*ROWS, *big])
    code = (
        "import resource, sys\n"
        "from layerlake.cli.main import main\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (8000, 8000))\n"  # files of 8 kB at most
        f"sys.exit(main(['import-metrics', {str(csv)!r}, '--source', 'paper', '--suite', 'pythia', '--root', {str(root)!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2, done.stderr
    assert "File too large" in done.stderr and "Traceback" not in done.stderr
    assert views(root) == before and main(["check", "--root", str(root)]) == 0


LOOP = r"""
import sys
import numpy as np
from layerlake.warehouse.synthetic import checkpoint_tables
from layerlake.warehouse.writer import Warehouse
w = Warehouse(sys.argv[1])
i = 0
while True:
    value = 1.0 + (i % 2)  # two versions of task t, told apart by their gram values
    grams = {(layer, "mlp_out"): np.full((8, 8), value) for layer in range(6)}
    w.commit("t", "s", "m", checkpoint_tables("m", 0, grams, {(0, "dense"): [value]}, d=4), {"version": value})
    i += 1
    print(i, flush=True)
"""


def test_sigkill_at_random_moments_leaves_one_whole_version(tmp_path, capsys):
    root = tmp_path / "wh"
    rng = random.Random(0)
    for _ in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", LOOP, str(root)], stdout=subprocess.PIPE, text=True, cwd=REPO
        )
        proc.stdout.readline()  # at least one commit
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        con = warehouse.connect(root)
        values = con.sql("select distinct gram[1] from sketches").fetchall()
        spectra = con.sql("select distinct sv[1] from spectra").fetchall()
        con.close()
        assert len(values) == 1 and values == spectra  # one version, whole: never half of each
    Warehouse(root).commit("other", "s", "m", {}, {})  # the next writer removes what killed ones left
    assert main(["check", "--root", str(root)]) == 0
    assert [p for p in (root / "_staging").iterdir()] == []


def test_staging_leftovers_are_reported_and_removed_but_never_a_live_writers(tmp_path, capsys):
    root = tmp_path / "wh"
    w = Warehouse(root)
    w.commit("t0", "s", "m", checkpoint_tables("m", 0, {(0, "a"): np.eye(3)}, {(0, "w"): [1.0]}, d=3), {})
    dead = root / "_staging" / f"{HOST}.{2**22 + 7}.abc.sketches.tmp"
    dead.write_bytes(b"x" * 1000)
    live = root / "_staging" / f"{HOST}.{os.getpid()}.def.sketches.tmp"
    live.write_bytes(b"y")
    assert main(["check", "--root", str(root)]) == 1
    assert "FAIL staging_leftovers" in capsys.readouterr().out
    assert main(["check", "--root", str(root), "--allow", "staging_leftovers"]) == 0  # named, accepted
    assert "staging_leftovers" in capsys.readouterr().out and dead.exists()
    w.commit("t1", "s", "m", checkpoint_tables("m", 1, {(0, "a"): np.eye(3)}, {(0, "w"): [1.0]}, d=3), {})
    assert not dead.exists() and live.exists()
    live.unlink()
    assert main(["check", "--root", str(root)]) == 0


# --- an import lets nothing bad in ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_export(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("content")
    build_warehouse(base / "source", models=("m1",), steps=(0, 10))
    export_dataset(base / "source", base / "good")
    return base / "good"


def rewrite(folder: Path, table: str, change) -> None:
    """Change the rows of one file of ``table`` and make manifest.json agree (sha256, size, rows)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    rel = next(f["path"] for f in manifest["files"] if f["table"] == table)
    data = change(pq.read_table(folder / rel))
    pq.write_table(data, folder / rel)
    relist(folder, manifest, rel, data.num_rows)


def relist(folder: Path, manifest: dict, rel: str, rows: int | None = None) -> None:
    """Make manifest.json agree with the file's new bytes, renaming it after its new hash (a careful
    forger's export: every sha256 and size matches, and the dataset id)."""
    digest = sha256_file(folder / rel)
    new = rel[: -len("0123456789abcdef.parquet")] + f"{digest[:16]}.parquet"
    (folder / rel).rename(folder / new)
    for f in manifest["files"] + [f for t in manifest["tasks"] for f in t["files"]]:
        if f["path"] == rel:
            f["path"], f["sha256"], f["bytes"] = new, digest, (folder / new).stat().st_size
            f["rows"] = rows if rows is not None else f["rows"]
    manifest["dataset_id"] = dataset_id((f["path"], f["sha256"]) for f in manifest["files"])
    (folder / "manifest.json").write_text(json.dumps(manifest))


def set_column(table: pa.Table, name: str, values: list) -> pa.Table:
    return table.set_column(
        table.column_names.index(name), name, pa.array(values, table.schema.field(name).type)
    )


def nan_in_a_float(folder):
    rewrite(folder, "spectra", lambda t: set_column(t, "sv", [[float("nan"), 1.0]] * t.num_rows))


def null_weights_hash(folder):
    rewrite(folder, "checkpoints", lambda t: t.set_column(t.column_names.index("weights_sha256"), "weights_sha256",
                                                          pa.array([None] * t.num_rows, pa.string())))  # fmt: skip


def duplicate_key_in_a_file(folder):
    rewrite(folder, "sketches", lambda t: pa.concat_tables([t, t.slice(0, 1)]))


def task_listed_twice(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["tasks"].append(manifest["tasks"][0])
    (folder / "manifest.json").write_text(json.dumps(manifest))


def failed_task(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["tasks"][1]["status"] = "failed"
    (folder / "manifest.json").write_text(json.dumps(manifest))


def impossible_step(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    next(t for t in manifest["tasks"] if "step" in t["meta"])["meta"]["step"] = 10**15
    (folder / "manifest.json").write_text(json.dumps(manifest))


def negative_step_in_rows(folder):
    rewrite(folder, "spectra", lambda t: set_column(t, "step", [-5] * t.num_rows))


def corrupt_page_with_matching_sha(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    f = max((f for f in manifest["files"] if f["table"] == "sketches"), key=lambda f: f["bytes"])
    data = bytearray((folder / f["path"]).read_bytes())
    meta = pq.ParquetFile(folder / f["path"]).metadata.row_group(0)
    column = meta.column(meta.num_columns - 2)  # the packed Grams
    where = column.data_page_offset + column.total_compressed_size // 2
    data[where : where + 16] = b"\xff" * 16
    (folder / f["path"]).write_bytes(bytes(data))
    relist(folder, manifest, f["path"])


CONTENT_FAULTS = {
    nan_in_a_float: "NaN or infinite sv",
    null_weights_hash: "NULL weights_sha256",
    duplicate_key_in_a_file: "duplicate_keys",
    task_listed_twice: "is listed twice",
    failed_task: "has status 'failed'",
    impossible_step: "impossible step",
    negative_step_in_rows: "step outside",
    corrupt_page_with_matching_sha: r"does not decode|NaN or infinite gram",  # a raw page decodes to garbage
}


@pytest.mark.parametrize("fault", CONTENT_FAULTS, ids=lambda f: f.__name__)
def test_an_import_refuses_bad_content_and_changes_nothing(fault, good_export, tmp_path, capsys):
    import shutil

    folder = tmp_path / "shared"
    shutil.copytree(good_export, folder)
    fault(folder)
    local = tmp_path / "local"
    build_warehouse(local, models=("m2",), steps=(5,))
    before = tree_hash(local)
    with pytest.raises(ShareError, match="nothing was imported|not touched") as error:
        import_dataset(folder, local)
    assert re.search(CONTENT_FAULTS[fault], error.value.message), error.value.message
    assert tree_hash(local) == before
    assert main(["share", "import", str(folder), "--root", str(local)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_the_same_rows_under_two_tasks_of_one_export_are_refused(good_export, tmp_path):
    import shutil

    folder = tmp_path / "shared"
    shutil.copytree(good_export, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    task = json.loads(json.dumps(next(t for t in manifest["tasks"] if t["task_id"] == "t-m1-0")))
    copy = task["task_id"] + "-copy"
    for f in task["files"]:  # the same rows again, as another task
        old = f["path"]
        f["path"] = old.replace(f"/{task['task_id']}-", f"/{copy}-")
        (folder / f["path"]).write_bytes((folder / old).read_bytes())
    task["task_id"] = copy
    manifest["tasks"].append(task)
    manifest["files"] += [
        {**f, "task_id": copy, "suite": task["suite"], "model": task["model"]} for f in task["files"]
    ]
    manifest["dataset_id"] = dataset_id((f["path"], f["sha256"]) for f in manifest["files"])
    (folder / "manifest.json").write_text(json.dumps(manifest))
    local = tmp_path / "local"
    build_warehouse(local, models=("m2",), steps=(5,))
    before = tree_hash(local)
    with pytest.raises(ShareError, match="duplicate_keys") as error:
        import_dataset(folder, local)
    assert "nothing was imported" in error.value.message
    assert tree_hash(local) == before


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_import_metrics_refuses_non_finite_values(value, tmp_path, capsys):
    csv = write_csv(tmp_path / "m.csv", [*ROWS[:2], (*ROWS[2][:5], value)], HEADER)
    assert import_metrics(tmp_path / "wh", csv) == 2
    assert "finite numbers" in capsys.readouterr().err
    assert not (tmp_path / "wh" / "_manifest" / "commits.jsonl").exists()


def test_an_over_long_name_is_an_error_not_a_file_system_failure(tmp_path, capsys):
    long = "s" * 300
    assert main(["import-metrics", str(write_csv(tmp_path / "m.csv")), "--source", long, "--suite", "pythia",
                 "--root", str(tmp_path / "wh")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "at most 128" in err and "Traceback" not in err
    w = Warehouse(tmp_path / "wh2")
    with pytest.raises(WarehouseError, match="cannot name a warehouse folder"):
        w.commit("t", "s", "m" * 300, {}, {})


@pytest.mark.parametrize(
    "command", [pytest.param("import-metrics", marks=pytest.mark.slow), "share import"]
)  # the same all-or-nothing publish: one in make test, both in make test-slow
def test_sigkill_of_a_real_import_leaves_the_old_or_the_new_rows(tmp_path, command):
    """The real command killed at random moments: every time, readers see exactly the rows before it or
    exactly the rows of a complete import, never a part; the next run cleans up and completes."""
    import shutil

    big = [(f"m{i % 7}", s, layer, "attention.dense", "cka_scores", round(random.Random(s).random(), 6))
           for i in range(7) for s in range(0, 400, 10) for layer in range(24)]  # fmt: skip
    pristine = tmp_path / "old"
    assert import_metrics(pristine, write_csv(tmp_path / "old.csv")) == 0
    if command == "import-metrics":  # replaces the task's rows with more of them
        args = ["import-metrics", str(write_csv(tmp_path / "big.csv", [*ROWS, *big])), "--source", "paper",
                "--suite", "pythia"]  # fmt: skip
    else:  # adds another source's rows
        src = tmp_path / "src"
        assert main(["import-metrics", str(write_csv(tmp_path / "other.csv", big)), "--source", "other",
                     "--suite", "pythia", "--root", str(src)]) == 0  # fmt: skip
        export_dataset(src, tmp_path / "export")
        args = ["share", "import", str(tmp_path / "export")]
    reference = tmp_path / "reference"
    shutil.copytree(pristine, reference)
    assert main([*args, "--root", str(reference)]) == 0
    old, new = views(pristine), views(reference)
    assert old != new
    root, rng = tmp_path / "wh", random.Random(7)
    for _ in range(4):
        shutil.rmtree(root, ignore_errors=True)
        shutil.copytree(pristine, root)
        proc = subprocess.Popen([sys.executable, "-m", "layerlake.cli", *args, "--root", str(root)], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(rng.uniform(1.0, 5.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert views(root) in (old, new)
    assert main([*args, "--root", str(root)]) == 0  # the next run removes what the killed one left
    assert views(root) == new and list((root / "_staging").iterdir()) == []
    assert main(["check", "--root", str(root)]) == 0
