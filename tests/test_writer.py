"""The single-writer commit protocol: validation, files, manifest, torn lines, SIGKILL, gc."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from layerlake.core.hashing import sha256_file
from layerlake.warehouse import schema
from layerlake.warehouse.errors import WarehouseError
from layerlake.warehouse.manifest import read_entries
from layerlake.warehouse.synthetic import checkpoint_tables
from layerlake.warehouse.writer import HOST, Warehouse

REPO = Path(__file__).resolve().parent.parent


def tables(step: int = 0, n: int = 4, layers: int = 2) -> dict[str, pa.Table]:
    rng = np.random.default_rng(step)
    grams = {
        (layer, site): rng.normal(size=(n, n)) for layer in range(layers) for site in ("attn_out", "mlp_out")
    }
    spectra = {(layer, "dense"): np.sort(rng.random(5))[::-1] for layer in range(layers)}
    return checkpoint_tables("m", step, grams, spectra, d=8)


def test_commit_writes_shards_and_manifest(tmp_path):
    w = Warehouse(tmp_path)
    entry = w.commit("t0", "s", "m", tables(0), {"step": 0, "config_hash": "c1"})
    assert {f.table for f in entry.files} == {"checkpoints", "sketches", "spectra"}
    for f in entry.files:
        path = tmp_path / f.path
        assert f.path == f"{f.table}/s/m/t0-{f.sha256[:16]}.parquet"  # named by its content
        assert path.stat().st_size == f.bytes and sha256_file(path) == f.sha256
        meta = pq.read_schema(path).metadata
        assert meta[b"layerlake.schema_version"] == str(schema.SCHEMA_VERSION).encode()
        assert meta[b"layerlake.task_id"] == b"t0"
        assert pq.read_metadata(path).row_group(0).column(0).compression == "ZSTD"
        stored = pq.read_table(path)
        assert stored.num_rows == f.rows and stored.column_names[:3] == ["suite", "model", "run_id"]
        assert set(stored.column("run_id").to_pylist()) == {"s.m"}  # the suite model's own run by default
    line = json.loads((tmp_path / "_manifest" / "commits.jsonl").read_text().splitlines()[0])
    assert (
        line["status"] == "ok"
        and line["meta"]["config_hash"] == "c1"
        and line["schema_version"] == schema.SCHEMA_VERSION
    )
    assert line["run_id"] == "s.m"
    assert set(line["files"][0]) == {"table", "path", "sha256", "rows", "bytes"}
    assert w.is_committed("t0") and not w.is_committed("other")
    assert list(os.listdir(tmp_path / "_staging")) == []


def test_empty_tables_get_no_file(tmp_path):
    w = Warehouse(tmp_path)
    t = tables(0)
    t["spectra"] = t["spectra"].slice(0, 0)
    entry = w.commit("t0", "s", "m", t, {})
    assert "spectra" not in {f.table for f in entry.files}
    assert not (tmp_path / "spectra").exists()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda t: t.drop_columns(["gram_norm"]), "missing columns ['gram_norm']"),
        (lambda t: t.append_column("extra", pa.array([1] * t.num_rows)), "unknown columns ['extra']"),
        (lambda t: t.set_column(t.schema.get_field_index("site"), "site", pa.array([None] * t.num_rows, pa.string())),
         "holds NULLs"),
        (lambda t: t.set_column(t.schema.get_field_index("layer"), "layer", pa.array(["x"] * t.num_rows)),
         "do not cast"),
    ],
)  # fmt: skip
def test_commit_rejects_tables_off_contract(tmp_path, mutate, message):
    w = Warehouse(tmp_path)
    t = tables(0)
    t["sketches"] = mutate(t["sketches"])
    with pytest.raises(WarehouseError, match=message.replace("[", r"\[").replace("]", r"\]")):
        w.commit("t0", "s", "m", t, {})
    assert read_entries(tmp_path / "_manifest" / "commits.jsonl") == []


def test_rejects_unknown_table_and_bad_names(tmp_path):
    w = Warehouse(tmp_path)
    with pytest.raises(WarehouseError, match="unknown table"):
        w.commit("t0", "s", "m", {"nope": pa.table({"a": [1]})}, {})
    with pytest.raises(WarehouseError, match="cannot name"):
        w.commit("t0", "s", "a/b", tables(0), {})


def test_castable_types_and_partition_columns_are_accepted(tmp_path):
    w = Warehouse(tmp_path)
    t = tables(0)
    sk = t["sketches"]
    sk = sk.set_column(sk.schema.get_field_index("layer"), "layer", sk.column("layer").cast(pa.int64()))
    t["sketches"] = sk.append_column("model", pa.array(["m"] * sk.num_rows))
    entry = w.commit("t0", "s", "m", t, {})
    path = tmp_path / next(f.path for f in entry.files if f.table == "sketches")
    assert pq.read_schema(path).field("layer").type == pa.int32()
    t["spectra"] = t["spectra"].append_column("model", pa.array(["other"] * t["spectra"].num_rows))
    with pytest.raises(WarehouseError, match="committed as 'm'"):
        w.commit("t1", "s", "m", t, {})


def test_recommit_replaces_and_latest_wins(tmp_path):
    w = Warehouse(tmp_path)
    w.commit("t0", "s", "m", tables(0, layers=1), {"v": 1})
    w.record_failure("t1", "s", "m", "boom", {"v": 1})
    second = w.commit("t0", "s", "m", tables(0, layers=3), {"v": 2})
    assert w.committed()["t0"] == second and w.committed()["t0"].meta == {"v": 2}
    assert set(w.failed()) == {"t1"} and w.failed()["t1"].error == "boom"
    sketch = next(f for f in second.files if f.table == "sketches")
    assert pq.read_table(tmp_path / sketch.path).num_rows == 6
    w.commit("t1", "s", "m", tables(1), {})
    assert w.failed() == {}


def test_torn_last_line_is_ignored_then_repaired(tmp_path):
    w = Warehouse(tmp_path)
    w.commit("t0", "s", "m", tables(0), {})
    manifest = tmp_path / "_manifest" / "commits.jsonl"
    with open(manifest, "ab") as handle:
        handle.write(b'{"status": "ok", "task_id": "t9", "fi')  # a killed append
    assert set(Warehouse(tmp_path).committed()) == {"t0"}
    w2 = Warehouse(tmp_path)
    w2.commit("t1", "s", "m", tables(1), {})
    lines = manifest.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(x)["status"] == "ok" for x in lines)
    assert set(w2.committed()) == {"t0", "t1"}


def test_gc_removes_staging_leftovers_and_orphans(tmp_path):
    w = Warehouse(tmp_path)
    w.commit("t0", "s", "m", tables(0), {})
    dead = tmp_path / "_staging" / f"{HOST}.{2**22 + 12345}.abc.sketches.tmp"  # a pid above Linux's pid_max
    dead.write_bytes(b"partial")
    live = tmp_path / "_staging" / f"{HOST}.{os.getpid()}.def.sketches.tmp"  # this process: a live writer
    live.write_bytes(b"writing")
    orphan = tmp_path / "sketches" / "s" / "m" / f"orphan-{'0' * 16}.parquet"
    orphan.write_bytes(b"x")
    assert len(w.gc(dry_run=True, grace_s=0)) == 2 and orphan.exists()
    assert (
        w.gc() == [dead] and orphan.exists()
    )  # a fresh orphan is kept for a grace period (a reader may need it)
    removed = w.gc(grace_s=0)
    assert [p.name for p in removed] == [orphan.name]
    assert not orphan.exists() and live.exists() and w.is_committed("t0")


def test_is_committed_false_when_a_file_is_gone(tmp_path):
    w = Warehouse(tmp_path)
    entry = w.commit("t0", "s", "m", tables(0), {})
    (tmp_path / entry.files[0].path).unlink()
    assert not w.is_committed("t0")


LOOP = """
import sys
import numpy as np
from layerlake.warehouse.synthetic import checkpoint_tables
from layerlake.warehouse.writer import HOST, Warehouse
w = Warehouse(sys.argv[1])
rng = np.random.default_rng(0)
for i in range(100000):
    grams = {(layer, "mlp_out"): rng.normal(size=(48, 48)) for layer in range(4)}
    spectra = {(layer, "dense"): np.sort(rng.random(16))[::-1] for layer in range(4)}
    t = checkpoint_tables("m", i % 7, grams, spectra, d=8)
    w.commit(f"t{i % 7}", "s", "m", t, {"i": i})
    print(i, flush=True)
"""


def test_sigkill_while_committing_leaves_only_complete_tasks(tmp_path):
    from layerlake import warehouse

    proc = subprocess.Popen(
        [sys.executable, "-c", LOOP, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        for _ in range(12):  # let it commit (and re-commit) a few tasks, then kill it mid-flight
            assert proc.stdout.readline(), "writer subprocess died"
        time.sleep(0.013)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    w = Warehouse(tmp_path)
    committed = w.committed()
    assert committed, "nothing committed before the kill"
    con = warehouse.connect(tmp_path)
    # Every visible task shows all of its rows, from one commit, with the listed counts.
    visible = dict(con.sql("select task_id, sum(rows) from manifest group by all").fetchall())
    for task_id, count in visible.items():
        assert w.is_committed(task_id)
        assert count == sum(f.rows for f in committed[task_id].files)
    got = con.sql("select count(*) from sketches").fetchall()[0][0]
    assert got == 4 * len(visible)
    # Readers ignore anything else on disk; gc only removes what no entry lists.
    w.gc()
    assert all(w.is_committed(t) for t in visible)


def test_the_writer_lock_is_re_entrant_per_thread_only(tmp_path):
    """A tracked run's committing thread and its training thread (which records a failed snapshot) share
    one ``Warehouse``: while one holds the lock, the other must wait for it, not enter it as its own."""
    import threading

    store = Warehouse(tmp_path)
    held, release, seen = threading.Event(), threading.Event(), []

    def holder() -> None:
        with store.lock():
            held.set()
            release.wait()

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait()
    with store.lock(wait=False) as got:
        seen.append(got)
    release.set()
    thread.join()
    with store.lock(wait=False) as got, store.lock(wait=False) as again:  # its own: re-entrant
        seen += [got, again]
    assert seen == [False, True, True]
