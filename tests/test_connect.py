"""layerlake.warehouse.connect: typed views over committed shards only, empty warehouses, attach, read-only."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest

from layerlake import warehouse
from layerlake.warehouse import schema
from layerlake.warehouse.errors import WarehouseError
from layerlake.warehouse.synthetic import checkpoint_tables
from layerlake.warehouse.views import default_root, duck_type
from layerlake.warehouse.writer import Warehouse


def commit(w: Warehouse, model: str, step: int, task_id: str) -> None:
    rng = np.random.default_rng(step)
    grams = {(0, "mlp_out"): rng.normal(size=(3, 3))}
    w.commit(
        task_id,
        "s",
        model,
        checkpoint_tables(model, step, grams, {(0, "dense"): [2.0, 1.0]}, d=4),
        {"step": step},
    )


def test_empty_warehouse_has_typed_empty_views(tmp_path):
    Warehouse(tmp_path)
    con = warehouse.connect(tmp_path)
    for table in schema.TABLES.values():
        described = con.sql(f"describe {table.name}").fetchall()
        want = [(f.name, duck_type(f.type)) for f in table.view_schema()]
        assert [(r[0], r[1]) for r in described] == want
        assert con.sql(f"select count(*) from {table.name}").fetchall() == [(0,)]
    assert con.sql("select count(*) from manifest").fetchall() == [(0,)]
    assert con.sql("select count(*) from failures").fetchall() == [(0,)]


def test_views_show_only_committed_shards(tmp_path, monkeypatch):
    w = Warehouse(tmp_path)
    commit(w, "70m", 0, "a")
    commit(w, "070", 1, "b")
    # A stray file in the tree (a copy of a real shard) and an orphan are invisible.
    (src,) = (tmp_path / "sketches" / "s" / "70m").glob("a-*.parquet")
    shutil.copy(src, src.with_name("stray-0000000000000000.parquet"))
    monkeypatch.chdir("/")  # views hold absolute paths
    con = warehouse.connect(tmp_path)
    rows = con.sql("select model, step from sketches order by step").fetchall()
    assert rows == [("70m", 0), ("070", 1)]  # '070' stays text
    assert con.sql("select count(*) from spectra").fetchall() == [(2,)]
    assert con.sql("select count(*) from manifest where table_name = 'sketches'").fetchall() == [(2,)]
    assert con.sql("select typeof(gram), typeof(step), typeof(layer) from sketches limit 1").fetchall() == [
        ("FLOAT[]", "BIGINT", "INTEGER")
    ]


def test_failures_view_and_partly_filled(tmp_path):
    w = Warehouse(tmp_path)
    commit(w, "m", 0, "a")
    w.record_failure("b", "s", "m", "out of memory", {"revision": "step1", "step": 1})
    con = warehouse.connect(tmp_path)
    assert con.sql("select task_id, error, revision, step from failures").fetchall() == [
        ("b", "out of memory", "step1", 1)
    ]
    assert con.sql("select count(*) from probes").fetchall() == [(0,)]


def test_task_with_mismatching_file_is_hidden(tmp_path):
    w = Warehouse(tmp_path)
    commit(w, "m", 0, "a")
    commit(w, "m", 1, "b")
    path = tmp_path / next(f.path for f in w.committed()["b"].files if f.table == "spectra")
    path.write_bytes(path.read_bytes() + b"\0")  # as after a re-commit killed before its manifest line
    con = warehouse.connect(tmp_path)
    assert con.sql("select distinct step from sketches").fetchall() == [(0,)]


def test_attach_another_root(tmp_path):
    a, b = Warehouse(tmp_path / "a"), Warehouse(tmp_path / "b")
    commit(a, "m", 0, "x")
    commit(b, "n", 5, "y")
    commit(b, "m", 0, "x")  # the same task in both roots is read once
    con = warehouse.connect(tmp_path / "a", attach=[tmp_path / "b"])
    assert con.sql("select model, step from sketches order by all").fetchall() == [("m", 0), ("n", 5)]


def test_read_only_connection_reads_nothing_else_and_writes_no_file(tmp_path):
    w = Warehouse(tmp_path)
    commit(w, "m", 0, "a")
    con = warehouse.connect(tmp_path)
    with pytest.raises(duckdb.Error):
        con.execute(f"copy (select 1) to '{tmp_path / 'out.csv'}'")
    with pytest.raises(duckdb.Error):
        con.execute("select * from read_csv('/etc/hostname')")
    assert not (tmp_path / "out.csv").exists()
    writable = warehouse.connect(tmp_path, read_only=False)
    writable.execute(f"copy (select 1) to '{tmp_path / 'out.csv'}'")
    assert (tmp_path / "out.csv").exists()


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(WarehouseError, match="no warehouse at"):
        warehouse.connect(tmp_path / "nope")


def test_default_root_matches_conf(monkeypatch, tmp_path):
    from layerlake.conf.compose import compose

    assert Path(compose().paths.warehouse) == default_root()
    monkeypatch.setenv("LAYERLAKE_DATA", str(tmp_path))
    assert Path(compose().paths.warehouse) == default_root() == tmp_path / "warehouse"


def test_layerlake_connect_delegates(tmp_path):
    import layerlake

    w = Warehouse(tmp_path)
    commit(w, "m", 0, "a")
    con = layerlake.connect(tmp_path)
    assert con.sql("select round(erank(sv), 6) from spectra").fetchall()[0][0] == pytest.approx(
        float(np.exp(-(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3)))), abs=1e-6
    )


def view_text(con, name: str) -> str:
    return con.sql("select sql from duckdb_views() where view_name = ?", params=[name]).fetchall()[0][0]


def test_a_warehouse_of_an_older_schema_names_the_migration(tmp_path):
    w = Warehouse(tmp_path)
    commit(w, "m1", 0, "t0")
    manifest = tmp_path / "_manifest" / "commits.jsonl"
    lines = manifest.read_text().splitlines()
    lines[0] = lines[0].replace(f'"schema_version":{schema.SCHEMA_VERSION}', '"schema_version":1')
    manifest.write_text("\n".join(lines) + "\n")
    with pytest.raises(WarehouseError, match="older layerlake") as error:
        warehouse.connect(tmp_path)
    assert "layerlake migrate" in error.value.fix
