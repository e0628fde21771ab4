"""Compaction: the views' content is the same before, during and after; SIGKILL loses nothing; a replaced
task of a merged file keeps the other tasks' rows; a finished tracked run compacts its own files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import layerlake
from layerlake.warehouse import schema
from layerlake.warehouse.command import check
from layerlake.warehouse.compact import compact
from layerlake.warehouse.synthetic import checkpoint_tables
from layerlake.warehouse.writer import Warehouse

VIEWS = tuple(schema.TABLES)


def tables(model: str, step: int) -> dict:
    rng = np.random.default_rng(step)
    grams = {(layer, site): rng.normal(size=(4, 4)) for layer in (0, 1) for site in ("mlp_out", "attn_out")}
    spectra = {(layer, "dense"): sorted(rng.random(4), reverse=True) for layer in (0, 1)}
    return checkpoint_tables(model, step, grams, spectra, d=4)


def many_small_tasks(root: Path, n: int = 40) -> Warehouse:
    """``n`` one-checkpoint tasks over two models, each its own small files (as tracking leaves them)."""
    store = Warehouse(root)
    for i in range(n):
        model = f"m{i % 2}"
        store.commit(f"t{i}", "s", model, tables(model, i), {"step": i}, run_id=f"run-{model}")
    return store


def content(root: Path) -> dict[str, list[tuple]]:
    """Every view's rows, sorted: what a reader sees."""
    con = layerlake.connect(root)
    try:
        return {v: sorted(map(repr, con.sql(f"select * from {v}").fetchall())) for v in VIEWS}
    finally:
        con.close()


def listed_files(root: Path) -> set[str]:
    return {f.path for e in Warehouse(root).committed().values() for f in e.files}


def test_compaction_keeps_every_view_and_merges_the_files(tmp_path):
    store = many_small_tasks(tmp_path)
    before, files_before = content(tmp_path), listed_files(tmp_path)
    lines_before = len(store.manifest.read_text().splitlines())
    report = compact(tmp_path)
    assert content(tmp_path) == before
    files_after = listed_files(tmp_path)
    assert report.files_before == len(files_before) == 40 * 3  # checkpoints, sketches, spectra
    assert report.files_after == len(files_after) == 3 * 2  # one file per table and model
    assert len(store.manifest.read_text().splitlines()) == lines_before == 40  # one line per task
    assert check(["--root", str(tmp_path), "--verify-files"]) == 0
    assert compact(tmp_path).tasks == 0  # compacted already: nothing to do
    assert content(tmp_path) == before


def test_replacing_one_task_of_a_merged_file_keeps_the_others(tmp_path):
    store = many_small_tasks(tmp_path, n=6)
    compact(tmp_path)
    before = content(tmp_path)
    changed = tables("m0", 2)
    changed["spectra"] = changed["spectra"].set_column(
        changed["spectra"].schema.get_field_index("sv"), "sv", pa.array([[9.0, 8.0, 7.0, 6.0]] * changed["spectra"].num_rows)
    )  # fmt: skip
    store.commit("t2", "s", "m0", changed, {"step": 2}, run_id="run-m0")
    after = content(tmp_path)
    assert after["sketches"] == before["sketches"] and after["checkpoints"] == before["checkpoints"]
    con = layerlake.connect(tmp_path)
    svs = con.sql("select step, any_value(sv) from spectra group by step order by step").fetchall()
    assert [s for s, sv in svs if sv[0] == 9.0] == [2] and len(svs) == 6
    assert check(["--root", str(tmp_path), "--verify-files"]) == 0


def own_rows(root: Path) -> dict[tuple[str, str], list]:
    """Each task's rows, per table, read through its own listing (its slice of a merged file)."""
    from layerlake.warehouse.manifest import read_task_rows

    return {
        (e.task_id, f.table): read_task_rows(root, f)
        .drop_columns(["gram"] if f.table == "sketches" else [])
        .to_pylist()
        for e in Warehouse(root).committed().values()
        for f in e.files
    }


def test_each_task_owns_exactly_its_rows_in_a_merged_file_and_a_recommit_loses_no_other(tmp_path):
    store = many_small_tasks(tmp_path, n=8)
    before = own_rows(tmp_path)
    assert {step for (task, table), rows in before.items() for r in rows for step in [r["step"]]} == set(
        range(8)
    )
    compact(tmp_path)
    assert any(f.shared for e in store.committed().values() for f in e.files)
    assert own_rows(tmp_path) == before  # every task's slice holds that task's rows, none of another's
    for task in ("t2", "t5"):  # re-commit one task of each merged file: the others keep their own rows
        step = int(task[1:])
        store.commit(
            task, "s", f"m{step % 2}", tables(f"m{step % 2}", step), {"step": step}, run_id=f"run-m{step % 2}"
        )
    assert own_rows(tmp_path) == before
    con = layerlake.connect(tmp_path)
    assert con.sql("select count(distinct step), count(*) from checkpoints").fetchall() == [(8, 8)]
    assert check(["--root", str(tmp_path), "--verify-files"]) == 0


READER = """
import sys, time, layerlake
root, views = sys.argv[1], sys.argv[2].split(",")
until = time.time() + float(sys.argv[3])
while time.time() < until:
    con = layerlake.connect(root)
    parts = []
    for v in views:
        parts.append(str(sorted(map(repr, con.sql(f"select * from {v}").fetchall()))))
    con.close()
    print(hash("|".join(parts)), flush=True)
"""


def test_a_concurrent_reader_sees_the_same_content_throughout(tmp_path):
    many_small_tasks(tmp_path, n=60)
    script = tmp_path.parent / "reader.py"
    script.write_text(READER)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    reader = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), ",".join(VIEWS), "8"],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    first = reader.stdout.readline().strip()  # the reader is reading
    compact(tmp_path)
    seen = [first]
    for line in reader.stdout:  # it reads on, over the new files, until its time is up
        seen.append(line.strip())
    assert reader.wait() == 0
    assert len(seen) >= 3 and set(seen) == {first}


COMPACTOR = """
import sys
from layerlake.warehouse.compact import compact
print("start", flush=True)
compact(sys.argv[1], small_bytes=1 << 30, target_bytes=int(sys.argv[2]))
print("done", flush=True)
"""


@pytest.fixture(scope="module")
def uncompacted(tmp_path_factory):
    """80 small tasks (compacting them takes about a second) and what readers see of them."""
    root = tmp_path_factory.mktemp("uncompacted")
    many_small_tasks(root, n=80)
    return root, content(root)


@pytest.mark.parametrize("delay", [0.1, 0.4, 0.7, 1.0])
def test_sigkill_during_compaction_loses_nothing(tmp_path, uncompacted, delay):
    source, before = uncompacted
    root = tmp_path / "wh"
    shutil.copytree(source, root)
    script = tmp_path / "compactor.py"
    script.write_text(COMPACTOR)
    # merged files of 2-3 tasks: many of them, so the kill falls among their writes or the switch
    job = subprocess.Popen(
        [sys.executable, str(script), str(root), "15000"], stdout=subprocess.PIPE, text=True
    )
    assert job.stdout.readline().strip() == "start"
    time.sleep(delay)
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert content(root) == before
    compact(root)  # the next compaction does the work, and removes what the killed one left in staging
    assert content(root) == before
    assert check(["--root", str(root), "--verify-files"]) == 0
    manifest = [json.loads(line) for line in (root / "_manifest" / "commits.jsonl").read_text().splitlines()]
    assert len({m["task_id"] for m in manifest}) == len(manifest)  # one line per task after compaction


def test_a_finished_tracked_run_compacts_its_own_files(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    import tiny_models

    model = tiny_models.neox(seed=0)
    probe = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]]
    with layerlake.track(model, suite="toy", run_id="r", warehouse=tmp_path, probe=probe, cadence=1) as run:
        for step in range(6):
            run.log(step, loss=float(step))
            run.snapshot(step, model)
    committed = Warehouse(tmp_path).committed()
    snapshots = [e for e in committed.values() if e.meta.get("kind") == "extract"]
    assert len(snapshots) == 6
    paths = {f.path for e in snapshots for f in e.files}
    assert (
        len(paths) == 5
    )  # checkpoints, activation_stats, sketches, spectra, matrix_stats: one merged file each
    con = layerlake.connect(tmp_path)
    assert con.sql("select count(distinct step) from sketches").fetchall() == [(6,)]


def test_the_compact_command_merges_one_run_or_all_and_says_what_it_did(tmp_path, capsys):
    from layerlake.cli.main import main

    many_small_tasks(tmp_path, n=8)
    before = content(tmp_path)
    assert main(["compact", "--root", str(tmp_path), "--run", "run-m0"]) == 0
    out = capsys.readouterr().out
    assert "24 files -> 15 (4 tasks merged)" in out and "layerlake gc" in out
    assert content(tmp_path) == before
    assert main(["compact", "--root", str(tmp_path)]) == 0
    assert "15 files -> 6 (4 tasks merged)" in capsys.readouterr().out
    assert content(tmp_path) == before
    assert main(["compact", "--root", str(tmp_path / "nowhere")]) == 2
    assert "no warehouse at" in capsys.readouterr().err
