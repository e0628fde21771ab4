"""`layerlake check`: passes on a good warehouse, fails listing rows on planted faults."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from layerlake.warehouse.audits import load_audits
from layerlake.warehouse.command import check
from layerlake.warehouse.synthetic import checkpoint_tables
from layerlake.warehouse.writer import Warehouse


def good_tables(model: str, step: int, sv=(3.0, 2.0, 1.0), layers=(0, 1), sha=None):
    rng = np.random.default_rng(step)
    grams = {(layer, "mlp_out"): rng.normal(size=(3, 3)) for layer in layers}
    spectra = {(layer, "dense"): list(sv) for layer in layers}
    return checkpoint_tables(model, step, grams, spectra, d=4, weights_sha256=sha)


@pytest.fixture
def good(tmp_path):
    w = Warehouse(tmp_path)
    for step in (0, 10, 20):
        w.commit(f"t{step}", "s", "m", good_tables("m", step), {"step": step})
    return w


def test_audit_file_parses():
    names = [a.name for a in load_audits()]
    assert sorted(names) == [
        "duplicate_keys", "duplicate_weights", "missing_layers_or_sites", "non_finite", "tokens_not_monotone",
        "unsorted_spectra",
    ]  # fmt: skip
    assert all(
        a.description and a.body.lower().lstrip().startswith(("select", "with")) for a in load_audits()
    )


def test_good_warehouse_passes(good, capsys):
    assert check(["--root", str(good.root), "--verify-files"]) == 0
    assert "FAIL" not in capsys.readouterr().out


def test_unsorted_spectrum_fails_and_is_listed(good, capsys):
    good.commit("bad", "s", "m", good_tables("m", 30, sv=(1.0, 3.0, 2.0)), {})
    assert check(["--root", str(good.root)]) == 1
    out = capsys.readouterr().out
    assert "FAIL unsorted_spectra" in out and "(2 rows)" in out


def test_non_finite_missing_layer_duplicate_weights_and_tokens(good, capsys):
    t = good_tables("m", 30, sv=(np.nan, 1.0), layers=(0,))
    good.commit("t30", "s", "m", t, {})
    dup = good_tables("m", 40, sha=good_tables("m", 20)["checkpoints"].column("weights_sha256")[0].as_py())
    ck = dup["checkpoints"]
    dup["checkpoints"] = ck.set_column(ck.schema.get_field_index("tokens_seen"), "tokens_seen", pa.array([5]))
    good.commit("t40", "s", "m", dup, {})
    assert check(["--root", str(good.root)]) == 1
    out = capsys.readouterr().out
    for audit in ("non_finite", "missing_layers_or_sites", "duplicate_weights", "tokens_not_monotone"):
        assert f"FAIL {audit}" in out, audit
    assert "PASS duplicate_keys" in out


def test_a_checkpoint_with_no_rows_of_a_table_the_others_have_fails(good, capsys):
    # an extraction with no sites (extract.sites=[]) once replaced a checkpoint's rows with none
    tables = {name: t for name, t in good_tables("m", 30).items() if name != "sketches"}
    good.commit("t30", "s", "m", tables, {"step": 30})
    assert check(["--root", str(good.root), "--max-rows", "5"]) == 1
    out = capsys.readouterr().out
    assert "FAIL missing_layers_or_sites" in out and "(1 rows)" in out and "PASS duplicate_keys" in out


def test_verify_files_catches_a_changed_byte(good, capsys):
    entry = good.committed()["t0"]
    sketches = next(f for f in entry.files if f.table == "sketches")
    path = good.root / sketches.path
    data = bytearray(path.read_bytes())
    # A byte of a page header (the Grams' first page): the file no longer decodes. A flipped byte among
    # the Gram values themselves (stored uncompressed, warehouse.gram) only changes a value: --verify-files
    # (sha256) is what catches that.
    meta = pq.read_metadata(path)
    chunk = meta.row_group(0).column(meta.schema.to_arrow_schema().names.index("gram"))
    data[chunk.data_page_offset] ^= 0xFF
    path.write_bytes(bytes(data))
    assert check(["--root", str(good.root), "--verify-files"]) == 1
    assert "sha256 differs" in capsys.readouterr().out
    assert check(["--root", str(good.root)]) == 1  # the sizes match, but the damaged file cannot be read
    assert "FAIL" in capsys.readouterr().out


def test_allow_turns_an_audit_into_a_warning(good, capsys):
    dup = good_tables("m", 40, sha=good_tables("m", 20)["checkpoints"].column("weights_sha256")[0].as_py())
    good.commit("t40", "s", "m", dup, {})
    assert check(["--root", str(good.root)]) == 1
    assert check(["--root", str(good.root), "--allow", "duplicate_weights"]) == 0
    assert "WARN duplicate_weights" in capsys.readouterr().out
