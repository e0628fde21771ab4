"""`layerlake sql`: read-only by statement type, formats, schema, errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from layerlake.cli.main import main
from layerlake.warehouse.command import sql
from layerlake.warehouse.errors import QueryError
from layerlake.warehouse.synthetic import checkpoint_tables
from layerlake.warehouse.writer import Warehouse


@pytest.fixture
def root(tmp_path):
    w = Warehouse(tmp_path / "wh")
    for step in (0, 1):
        t = checkpoint_tables("m", step, {(0, "mlp_out"): np.eye(3)}, {(0, "dense"): [4.0, 1.0]}, d=4)
        w.commit(f"t{step}", "s", "m", t, {})
    return str(w.root)


@pytest.mark.parametrize(
    "statement",
    [
        "delete from spectra",
        "create table x as select 1",
        "insert into spectra select * from spectra",
        "copy (select 1) to 'x.csv'",
        "attach 'x.db'",
        "install httpfs",
        "load httpfs",
        "pragma version",
        "set threads = 1",
        "export database 'x'",
        "explain analyze delete from spectra",
        "select 1; drop view spectra",
    ],
)
def test_writes_are_refused(root, statement):
    with pytest.raises(QueryError) as error:
        sql([statement, "--root", root])
    assert "read-only" in error.value.message or "one statement" in error.value.message


@pytest.mark.parametrize(
    ("statement", "named"),
    [
        ("checkpoint", "a CHECKPOINT statement"),  # DuckDB types it a CALL
        ("install httpfs", "an INSTALL statement"),  # DuckDB types it a LOAD
        ("attach 'x.db'", "an ATTACH statement"),
        ("export database 'x'", "an EXPORT statement"),
        ("with x as (select 1) insert into spectra select * from x", "an INSERT statement"),
        ("/* c */ delete from spectra", "a DELETE statement"),
    ],
)
def test_a_refused_statement_is_named_as_written(root, statement, named):
    with pytest.raises(QueryError) as error:
        sql([statement, "--root", root])
    assert f"read-only: {named} is refused" in error.value.message


@pytest.mark.parametrize("statement", ["-- only a comment", "/* nothing */", " ; "])
def test_an_empty_statement_is_named_empty(root, statement):
    with pytest.raises(QueryError) as error:
        sql([statement, "--root", root])
    assert "empty statement" in error.value.message and "got 0" not in error.value.message


def test_cli_prints_refusal_and_exits_2(root, capsys):
    assert main(["sql", "delete from spectra", "--root", root]) == 2
    assert "read-only" in capsys.readouterr().err


def test_select_as_table(root, capsys):
    assert sql(["select step, stable_rank(sv) as sr from spectra order by step", "--root", root]) == 0
    out = capsys.readouterr().out
    assert "1.0625" in out and "step" in out


def test_explain_select_is_allowed(root, capsys):
    assert sql(["explain select * from spectra", "--root", root]) == 0


def test_csv_json_parquet(root, tmp_path, capsys, monkeypatch):
    query = "select step, nuclear_norm(sv) as nn from spectra order by step"
    sql([query, "--root", root, "--format", "csv"])
    assert capsys.readouterr().out.splitlines() == ['"step","nn"', "0,5", "1,5"]
    buffer = io.BytesIO()
    monkeypatch.setattr("sys.stdout", io.TextIOWrapper(buffer))
    sql([query, "--root", root, "--format", "json"])
    assert json.loads(buffer.getvalue()) == [{"step": 0, "nn": 5.0}, {"step": 1, "nn": 5.0}]
    monkeypatch.undo()
    out = tmp_path / "r.parquet"
    capsys.readouterr()
    sql([query, "--root", root, "--output", str(out)])
    assert pq.read_table(out).to_pylist() == [{"step": 0, "nn": 5.0}, {"step": 1, "nn": 5.0}]
    said = capsys.readouterr()
    assert said.out == "" and said.err == f"wrote 2 rows, {out.stat().st_size:,} bytes (parquet) to {out}\n"


def _files(folder) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@pytest.mark.parametrize("target", ["_manifest/commits.jsonl", "shard", "link", "new.csv"])
def test_an_output_inside_the_warehouse_is_refused_and_changes_nothing(root, tmp_path, capsys, target):
    shard = next(Path(root).glob("spectra/**/*.parquet"))
    path = {"shard": shard, "link": tmp_path / "link.csv"}.get(target, Path(root) / target)
    if target == "link":
        path.symlink_to(Path(root) / "_manifest/commits.jsonl")
    before = _files(root)
    assert main(["sql", "select 1 as a", "--root", root, "--output", str(path), "--format", "csv"]) == 2
    err = capsys.readouterr().err
    assert f"is inside {root}" in err and "write the result outside the warehouse" in err
    assert _files(root) == before
    assert main(["check", "--root", root]) == 0


def test_an_output_inside_an_attached_folder_is_refused(root, tmp_path, capsys):
    shared = tmp_path / "shared"
    assert main(["share", "export", str(shared), "--root", root]) == 0
    before = _files(shared)
    args = ["sql", "select 1 as a", "--root", root, "--attach", str(shared)]
    assert main([*args, "--output", str(shared / "manifest.json"), "--format", "json"]) == 2
    assert f"is inside {shared}" in capsys.readouterr().err
    assert _files(shared) == before


def test_an_output_that_is_a_folder_is_named_a_folder(root, tmp_path, capsys):
    assert main(["sql", "select 1 as a", "--root", root, "--output", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"--output {tmp_path} is a folder" in err and "result.parquet" in err


def test_schema_describes_views(root, capsys):
    assert sql(["--schema", "--root", root]) == 0
    out = capsys.readouterr().out
    assert "gram_norm" in out and "Frobenius norm" in out and "failures" in out


def test_sql_error_has_a_hint(root):
    with pytest.raises(QueryError) as error:
        sql(["select no_such_column from spectra", "--root", root])
    assert "no_such_column" in error.value.message and "--schema" in error.value.fix


def test_staging_views_are_queryable_by_name_with_parameters(root, capsys):
    """A staging model is a view; its parameters are set with --param (validated like a recipe's)."""
    assert (
        sql(["select step, cka from cka_to_reference order by step", "--root", root, "--format", "csv"]) == 0
    )
    default = capsys.readouterr().out
    assert default.splitlines()[0] == '"step","cka"' and len(default.splitlines()) == 3
    args = ["select count(*) as n from layer_stabilisation where stabilisation_step = 0", "--root", root]
    assert sql([*args, "--format", "csv", "--param", "threshold=0.99"]) == 0
    assert capsys.readouterr().out.splitlines()[1] == "1"
    with pytest.raises(QueryError, match="does not name a staging parameter"):
        sql([*args, "--param", "treshold=0.9"])
    with pytest.raises(Exception, match="expected a finite number"):
        sql([*args, "--param", "threshold=high"])


def test_list_columns_write_as_csv(root, capsys):
    assert sql(["select step, sv from spectra order by step", "--root", root, "--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == '"step","sv"' and lines[1] == '0,"[4.0, 1.0]"'


def test_schema_lists_staging_views_and_macros(root, capsys):
    assert main(["sql", "--schema", "--root", root]) == 0
    out = capsys.readouterr().out
    assert "cka_to_reference" in out and "staging views" in out and "reference_step=None" in out
    assert "cka_normed(a, b, na, nb)" in out and "erank(sv)" in out


def test_schema_lists_every_macro_with_its_signature_and_first_sentence(root, capsys):
    from layerlake.warehouse.command import describe_macros
    from layerlake.warehouse.macros import public_macros

    macros = public_macros()
    rows = {r["macro"]: r["doc"] for r in describe_macros().to_pylist()}
    assert list(rows) == [m.signature for m in macros] and len(rows) >= 10
    for m in macros:
        assert m.signature.startswith(f"{m.name}(") and rows[m.signature]
        assert m.description.startswith(rows[m.signature])  # its first sentence
    assert main(["sql", "--schema", "--root", root]) == 0
    out = capsys.readouterr().out
    assert "SQL macros" in out and all(m.signature in out for m in macros) and "_ll_" not in out


# --- limits: time, memory, and a bounded window of a streamed result --------------------------------------


def test_an_endless_query_stops_at_the_timeout(root, capsys):
    endless = "select count(*) from range(1000000000000) a, range(1000) b"
    assert main(["sql", endless, "--root", root, "--timeout", "0.5"]) == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert "ran longer than 0.5 s and was stopped" in err and "--timeout SECONDS" in err


def test_a_query_past_the_memory_limit_is_stopped(root, capsys):
    assert (
        main(["sql", "select list(range) from range(100000000)", "--root", root, "--memory-limit", "20MB"])
        == 2
    )
    err = capsys.readouterr().err.replace("\n", " ")
    assert "more than its memory limit of 20MB" in err and "--memory-limit" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--memory-limit", "lots"], "is not a size"), (["--timeout", "-1"], "--timeout SECONDS >= 0"),
     (["--timeout", "nan"], "--timeout SECONDS >= 0"), (["--memory-limit", "1GB'; select 1; --"], "is not a size"),
     (["--max-rows", "0"], "--max-rows"), (["--memory-limit", "1B"], "'1B' is too small"),
     (["--memory-limit", "10KB"], "'10KB' is too small"), (["--memory-limit", "0.0000001%"], "is too small")],
)  # fmt: skip
def test_bad_limits_are_refused(root, capsys, args, message):
    assert main(["sql", "select 1", "--root", root, *args]) == 2
    assert message in capsys.readouterr().err.replace("\n", " ")


def test_a_tiny_memory_limit_leaves_this_process_able_to_check_statements(root, capsys):
    # a limit of a few KB once stayed set on this process's parser connection (its RESET ran out of memory
    # too): every later statement check failed, in the UI's server as in a notebook
    from layerlake.core.duck import QueryLimits, read_only_statement
    from layerlake.core.errors import SqlError

    for size in ("1B", "10KB", "0.0000001%"):
        with pytest.raises(SqlError, match="too small"):
            QueryLimits(memory_limit=size).check()
    read_only_statement("select 1")
    assert main(["sql", "select 1", "--root", root]) == 0


def test_a_stopped_query_leaves_an_existing_output_file_as_it_was(root, tmp_path, capsys):
    out = tmp_path / "result.csv"
    out.write_text("kept\n")
    endless = "select * from range(1000000000000) a, range(1000) b"
    code = main(["sql", endless, "--root", root, "--timeout", "1", "--output", str(out)])
    assert code == 2 and out.read_text() == "kept\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".result")) == []  # no partial file


@pytest.mark.parametrize("total", [0, 3, 40, 41, 1_000, 123_457])
@pytest.mark.parametrize("batch", [1, 7, 65_536])
def test_the_window_of_a_stream_is_what_the_table_shows(total, batch):
    import pyarrow as pa

    from layerlake.warehouse.command import window

    table = pa.table({"i": pa.array(range(total), pa.int64())})
    shown, count = window(pa.RecordBatchReader.from_batches(table.schema, table.to_batches(batch)), 40)
    assert count == total
    expected = table if total <= 40 else pa.concat_tables([table.slice(0, 30), table.slice(total - 10)])
    assert shown.equals(expected)


def test_max_rows_bounds_the_memory_a_large_result_takes():
    """A 2,000-batch result (160 MB) shown with --max-rows 5: at most a few batches are ever held."""
    import pyarrow as pa

    from layerlake.warehouse.command import window

    schema = pa.schema([("i", pa.int64())])
    peak = 0

    def batches():
        nonlocal peak
        for n in range(2_000):
            peak = max(peak, pa.total_allocated_bytes())
            yield pa.record_batch([pa.array(np.arange(n * 10_000, (n + 1) * 10_000))], schema=schema)

    start = pa.total_allocated_bytes()
    shown, total = window(pa.RecordBatchReader.from_batches(schema, batches()), 5)
    assert total == 20_000_000 and shown.column("i").to_pylist() == [0, 1, 2, 3, 19_999_999]
    assert peak - start < 4 * 80_000 + 1_000_000  # a few 80 kB batches, not 160 MB


def test_a_large_result_streams_to_every_format(root, tmp_path, capsys):
    import pyarrow.csv as pacsv

    query = "select range as i, [range, 1] as pair from range(200000)"
    for fmt in ("csv", "json", "parquet"):
        out = tmp_path / f"r.{fmt}"
        assert main(["sql", query, "--root", root, "--output", str(out)]) == 0
        if fmt == "parquet":
            rows = pq.read_table(out)
        elif fmt == "csv":
            rows = pacsv.read_csv(out)
        else:
            rows = json.loads(out.read_text())
        assert len(rows) == 200_000
    assert main(["sql", query, "--root", root, "--max-rows", "4"]) == 0
    out = capsys.readouterr().out
    words = " ".join(out.split())  # the caption folds to the table's width
    assert "200000 rows (showing 4; --max-rows N to show more; --output FILE writes every row)" in words
    assert "199999" in out


def test_a_table_from_the_query_worker_prints_without_arrow_warnings(root, capfd):
    # the worker's batches arrive in buffers Arrow's own group_by calls poorly aligned (a line per batch)
    query = (
        "select i % 7 as step, ['ov', 'mlp_out', 'attn_out'][1 + i % 3] as site, 'linear' as kernel,"
        " ['biased', 'debiased'][1 + i % 2] as estimator, count(*) as n from range(3000) t(i) group by all"
    )
    assert main(["sql", query, "--root", root]) == 0
    printed = capfd.readouterr()
    assert "debiased" in printed.out and "aligned" not in printed.err
