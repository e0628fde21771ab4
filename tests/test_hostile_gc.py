"""Garbage collection never breaks a reader (issue 22.5): a file that stops being listed (replaced by a
commit, merged away by ``compact``) is removed only a grace after it stopped being listed, however old
the file itself is; a reader connected before keeps reading it."""

from __future__ import annotations

import os
import time

import layerlake
from layerlake.warehouse.compact import compact
from layerlake.warehouse.synthetic import checkpoint_tables
from layerlake.warehouse.writer import Warehouse


def _tables(step: int) -> dict:
    grams = {(0, "mlp_out"): [[1.0, 0.5], [0.5, 2.0 + step]]}
    return checkpoint_tables("m", step, grams, {(0, "dense"): [2.0 + step, 1.0]}, d=2)


def _age(root, seconds: float) -> None:
    """Make every file under ``root`` look ``seconds`` old (written long ago)."""
    past = time.time() - seconds
    for path in root.rglob("*.parquet"):
        os.utime(path, (past, past))


def test_gc_after_compact_keeps_the_merged_away_files_for_a_grace_and_a_reader_reads_on(tmp_path):
    store = Warehouse(tmp_path)
    for step in range(4):
        store.commit(f"t{step}", "s", "m", _tables(step), {"step": step}, run_id="r")
    _age(tmp_path, 3600)  # written an hour ago, far beyond the grace
    reader = layerlake.connect(tmp_path)
    expected = reader.sql("select count(*) from spectra").fetchall()
    compact(tmp_path)
    unlisted = {
        p for p in tmp_path.rglob("*.parquet") if str(p.relative_to(tmp_path)) not in store.listed_paths()
    }
    assert unlisted  # compaction left the old files, no longer listed
    assert Warehouse(tmp_path).gc() == []  # they stopped being listed just now: kept
    assert all(p.exists() for p in unlisted)
    assert reader.sql("select count(*) from spectra").fetchall() == expected  # the old reader reads on
    reader.close()
    removed = Warehouse(tmp_path).gc(grace_s=0)
    assert set(removed) == unlisted and not any(p.exists() for p in unlisted)


def test_a_replaced_tasks_old_file_is_kept_a_grace_after_the_replacement(tmp_path):
    store = Warehouse(tmp_path)
    store.commit("t0", "s", "m", _tables(0), {"step": 0}, run_id="r")
    _age(tmp_path, 3600)
    old = set(tmp_path.rglob("*.parquet"))
    store.commit("t0", "s", "m", _tables(5), {"step": 0}, run_id="r")  # other rows: new files
    assert Warehouse(tmp_path).gc() == []
    assert all(p.exists() for p in old)
    assert set(Warehouse(tmp_path).gc(grace_s=0)) == old
