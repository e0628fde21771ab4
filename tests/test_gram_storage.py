"""Stored Grams (schema 3): little-endian float32 bytes, written uncompressed; the sketches view shows
them as the list they were committed as (gram) and as the bytes (gram_bytes), and a schema-2 warehouse
(Grams as lists, compacted) migrates to them keeping every row and every CKA."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import layerlake
from layerlake.core.hashing import sha256_bytes
from layerlake.warehouse import schema
from layerlake.warehouse.compact import compact
from layerlake.warehouse.gram import from_bytes, values_column
from layerlake.warehouse.macros import staging_values
from layerlake.warehouse.migrate import migrate
from layerlake.warehouse.synthetic import checkpoint_tables
from layerlake.warehouse.writer import Warehouse

STEPS = (0, 10, 20, 30)


def build(root: Path) -> Warehouse:
    store = Warehouse(root)
    for step in STEPS:
        rng = np.random.default_rng(step)
        grams = {
            (layer, site): np.cov(rng.normal(size=(6, 9))) for layer in (0, 1) for site in ("ov", "mlp_out")
        }
        spectra = {(layer, "dense"): sorted(rng.random(4), reverse=True) for layer in (0, 1)}
        store.commit(f"t{step}", "s", "m", checkpoint_tables("m", step, grams, spectra, d=9), {"step": step})
    return store


def cka_rows(root: Path) -> list[tuple]:
    con = layerlake.connect(root)
    with staging_values(con, {"reference_step": None}):
        rows = con.sql("select layer, site, step, cka from cka_to_reference order by all").fetchall()
    con.close()
    return rows


def test_grams_are_stored_as_uncompressed_float32_bytes_and_read_back_as_lists(tmp_path):
    build(tmp_path)
    (path,) = [p for p in (tmp_path / "sketches").rglob("t10-*.parquet")]
    meta = pq.ParquetFile(path).metadata
    column = meta.schema.to_arrow_schema().names.index("gram")
    assert meta.schema.to_arrow_schema().field("gram").type == pa.binary()
    assert meta.row_group(0).column(column).compression == "UNCOMPRESSED"
    stored = pq.read_table(path)
    con = layerlake.connect(tmp_path)
    rows = con.sql(
        "select layer, site, gram, gram_bytes, gram_norm from sketches where step = 10 order by layer, site"
    ).fetchall()
    for layer, site, gram, raw, norm in rows:
        i = [(r["layer"], r["site"]) for r in stored.to_pylist()].index((layer, site))
        assert raw == stored["gram"][i].as_py()
        np.testing.assert_array_equal(np.array(gram, dtype=np.float32), from_bytes(raw))
        values = from_bytes(raw).astype(np.float64)  # a sum's last bit depends on its order: a tolerance
        assert norm == pytest.approx(np.sqrt(np.dot(values, values)), rel=1e-14)
    values = from_bytes(rows[0][3]).astype(np.float64)
    assert len(values) == 21  # 6 x 6, packed
    cka = cka_rows(tmp_path)
    assert len(cka) == 2 * 2 * len(STEPS) and all(0 < c <= 1 for *_, c in cka)  # clamped: never above 1
    self_cka = [c for _, _, step, c in cka if step == max(STEPS)]  # the reference with itself
    assert len(self_cka) == 4 and self_cka == pytest.approx([1.0] * 4, abs=1e-12)


def as_schema_2(root: Path) -> None:
    """Rewrite a warehouse's files and manifest as schema 2 wrote them: every Gram a list of floats, no
    spectrum's precision (eps)."""
    manifest = root / "_manifest" / "commits.jsonl"
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    for path in {f["path"] for line in lines for f in line.get("files", []) if f["table"] == "sketches"}:
        table = pq.read_table(root / path)
        table = table.set_column(table.column_names.index("gram"), "gram", values_column(table["gram"]))
        pq.write_table(table.replace_schema_metadata({b"layerlake.schema_version": b"2"}), root / path)
    for path in {f["path"] for line in lines for f in line.get("files", []) if f["table"] == "spectra"}:
        table = pq.read_table(root / path)
        table = table.drop_columns(["eps"]) if "eps" in table.column_names else table  # as_schema_3 may have
        pq.write_table(table.replace_schema_metadata({b"layerlake.schema_version": b"2"}), root / path)
    for line in lines:
        line["schema_version"] = 2
        for f in line.get("files", []):
            data = (root / f["path"]).read_bytes()
            f["sha256"], f["bytes"] = sha256_bytes(data), len(data)
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_a_compacted_schema_2_warehouse_migrates_with_every_row_and_cka(tmp_path):
    build(tmp_path)
    compact(tmp_path)
    want = cka_rows(tmp_path)
    con = layerlake.connect(tmp_path)
    before = sorted(con.sql("select * exclude (gram_bytes) from sketches").fetchall(), key=repr)
    spectra = sorted(con.sql("select * from spectra").fetchall(), key=repr)  # weights: eps 2^-52 again
    con.close()
    as_schema_2(tmp_path)
    report = migrate(tmp_path)
    assert report.tasks == len(Warehouse(tmp_path).committed()) and report.runs == 0
    assert {e.schema_version for e in Warehouse(tmp_path).committed().values()} == {schema.SCHEMA_VERSION}
    con = layerlake.connect(tmp_path)
    after = sorted(con.sql("select * exclude (gram_bytes) from sketches").fetchall(), key=repr)
    assert after == before
    assert sorted(con.sql("select * from spectra").fetchall(), key=repr) == spectra
    assert {e.task_id for e in Warehouse(tmp_path).committed().values()} >= {f"t{s}" for s in STEPS}
    assert cka_rows(tmp_path) == want
    assert migrate(tmp_path).tasks == 0
