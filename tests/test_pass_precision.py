"""The precision of the pass and of the spectra: extract.autocast, extract.matmul_precision, the eps each
stored spectrum carries, and the migration that gives older rows theirs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from test_extract import PROBE, REF, SHA, neox, rows

import layerlake
from layerlake.core.errors import ConfigError
from layerlake.core.hashing import sha256_bytes
from layerlake.etl.extract import extract_from_model, pass_precision
from layerlake.etl.task import ExtractOptions
from layerlake.warehouse import schema
from layerlake.warehouse.errors import WarehouseError
from layerlake.warehouse.migrate import migrate
from layerlake.warehouse.writer import Warehouse

EPS = {name: float(torch.finfo(dtype).eps) for name, dtype in
       (("float64", torch.float64), ("float32", torch.float32), ("bfloat16", torch.bfloat16))}  # fmt: skip


def eps_of(tables, table: str, **where) -> set[float]:
    return {r["eps"] for r in rows(tables[table], **where)}


def test_each_spectrum_carries_the_precision_it_was_computed_in():
    default, _ = extract_from_model(neox(), REF, SHA, PROBE, ExtractOptions())
    assert eps_of(default, "activation_stats") == {EPS["float32"]}
    assert eps_of(default, "spectra", tensor="weight") == {EPS["float64"]}  # the float64 SVD of the weights
    assert eps_of(default, "spectra", tensor="grad") == {EPS["float32"]}  # the float32 backward's
    single, _ = extract_from_model(neox(), REF, SHA, PROBE, ExtractOptions(spectra_precision="float32"))
    assert eps_of(single, "spectra", tensor="weight") == {EPS["float32"]}
    mixed, _ = extract_from_model(neox(), REF, SHA, PROBE, ExtractOptions(autocast="bfloat16"))
    assert eps_of(mixed, "activation_stats") == {EPS["bfloat16"]}
    assert eps_of(mixed, "spectra", tensor="grad") == {EPS["bfloat16"]}
    assert eps_of(mixed, "spectra", tensor="weight") == {EPS["float64"]}  # taken before the pass


def test_bfloat16_autocast_runs_the_pass_in_bfloat16_and_ends_with_it():
    """Activations move by bfloat16's rounding (far more than float32's), the weights' spectra do not, and
    autocast is off again after the pass: a default pass after it gives the default numbers."""
    first, _ = extract_from_model(neox(), REF, SHA, PROBE, ExtractOptions())
    mixed, _ = extract_from_model(neox(), REF, SHA, PROBE, ExtractOptions(autocast="bfloat16"))
    again, _ = extract_from_model(neox(), REF, SHA, PROBE, ExtractOptions())
    rms = [np.asarray(t["activation_stats"].column("rms").to_pylist()) for t in (first, mixed, again)]
    moved = np.abs(rms[1] - rms[0]) / rms[0]
    assert moved.max() > 1e-4 and moved.max() < 0.1  # bfloat16 keeps 8 bits: about 2^-8 relative
    np.testing.assert_allclose(rms[2], rms[0], rtol=1e-12)
    weight = [np.concatenate(rows_sv(t, "weight")) for t in (first, mixed)]
    np.testing.assert_allclose(weight[1], weight[0], rtol=1e-12)
    assert not torch.is_autocast_enabled("cpu")


def rows_sv(tables, tensor: str) -> list[np.ndarray]:
    return [np.asarray(r["sv"]) for r in rows(tables["spectra"], tensor=tensor)]


def test_tf32_is_a_no_op_on_the_cpu():
    """TF32 exists on NVIDIA GPUs only: on the CPU the products stay float32 and the flag is untouched."""
    before = torch.backends.cuda.matmul.allow_tf32
    default, _ = extract_from_model(neox(), REF, SHA, PROBE, ExtractOptions())
    tf32, _ = extract_from_model(neox(), REF, SHA, PROBE, ExtractOptions(matmul_precision="tf32"))
    for table in ("activation_stats", "spectra"):
        assert eps_of(tf32, table) == eps_of(default, table)
    np.testing.assert_allclose(
        tf32["activation_stats"].column("rms").to_numpy(), default["activation_stats"].column("rms").to_numpy(),
        rtol=1e-12,
    )  # fmt: skip
    with pass_precision(ExtractOptions(matmul_precision="tf32"), torch.device("cpu")):
        assert torch.backends.cuda.matmul.allow_tf32 == before
    assert torch.backends.cuda.matmul.allow_tf32 == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_tf32_on_a_gpu_is_on_during_the_pass_only():
    before = torch.backends.cuda.matmul.allow_tf32
    with pass_precision(ExtractOptions(matmul_precision="tf32", device="cuda"), torch.device("cuda")):
        assert torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cuda.matmul.allow_tf32 == before
    tables, _ = extract_from_model(
        neox(), REF, SHA, PROBE, ExtractOptions(matmul_precision="tf32", device="cuda")
    )
    assert eps_of(tables, "activation_stats") == {2.0**-10}


def test_precision_options_are_closed_sets_and_hash_only_when_set():
    default = ExtractOptions().config_hash()
    assert ExtractOptions(autocast="none", matmul_precision="float32").config_hash() == default
    assert ExtractOptions(autocast="bfloat16").config_hash() != default
    assert ExtractOptions(matmul_precision="tf32").config_hash() != default
    with pytest.raises(ConfigError, match="extract.autocast 'float16' is not one of"):
        ExtractOptions(autocast="float16")
    with pytest.raises(ConfigError, match="extract.matmul_precision 'tf16' is not one of: float32, tf32"):
        ExtractOptions(matmul_precision="tf16")


# -- schema 3 -> 4: old rows get the precision the default options computed in ---------------------------


def as_schema_3(root: Path) -> None:
    """Rewrite a warehouse's files and manifest as schema 3 wrote them: no eps column."""
    manifest = root / "_manifest" / "commits.jsonl"
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    for line in lines:
        line["schema_version"] = 3
        for f in line.get("files", []):
            path = root / f["path"]
            table = pq.read_table(path)
            if "eps" in table.column_names:
                table = table.drop_columns(["eps"])
            metadata = {**(table.schema.metadata or {}), b"layerlake.schema_version": b"3"}
            pq.write_table(table.replace_schema_metadata(metadata), path)
            data = path.read_bytes()
            f["sha256"], f["bytes"] = sha256_bytes(data), len(data)
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_a_schema_3_warehouse_migrates_with_the_default_precision(tmp_path):
    tables, _ = extract_from_model(neox(), REF, SHA, PROBE, ExtractOptions())
    store = Warehouse(tmp_path)
    store.commit("t64", "tiny", "m", {k: v for k, v in tables.items() if v.num_rows}, {"step": 64})
    con = layerlake.connect(tmp_path)
    query = {
        "activation_stats": "select layer, site, head, sv, eps from activation_stats order by all",
        "spectra": "select layer, tensor, matrix, head, sv, eps from spectra order by all",
    }
    before = {t: con.sql(sql).fetchall() for t, sql in query.items()}
    con.close()
    as_schema_3(tmp_path)
    with pytest.raises(WarehouseError, match="layerlake migrate"):
        layerlake.connect(tmp_path)
    assert migrate(tmp_path).tasks == 1
    con = layerlake.connect(tmp_path)
    after = {t: con.sql(sql).fetchall() for t, sql in query.items()}
    assert after == before  # the defaults are what this extraction computed in
    ranks = con.sql(
        "select count(*) filter (numerical_rank(sv, rows, cols, eps) is null) from spectra"
    ).fetchall()[0][0]
    assert ranks == 0
    assert {e.schema_version for e in Warehouse(tmp_path).committed().values()} == {schema.SCHEMA_VERSION}
