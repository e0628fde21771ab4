"""`layerlake sql`: read-only by statement type, formats, schema, errors."""

from __future__ import annotations

import io
import json

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
    sql([query, "--root", root, "--output", str(out)])
    assert pq.read_table(out).to_pylist() == [{"step": 0, "nn": 5.0}, {"step": 1, "nn": 5.0}]


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
