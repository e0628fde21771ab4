"""SQL recipes tested as data: each fixture under tests/fixtures/recipes/ gives input rows (warehouse
tables), parameters and the expected output rows, computed independently (see generate.py there).

The inputs become Arrow tables with the warehouse contract's exact schema, registered on an in-memory
DuckDB as views named like the warehouse's; the real macros are installed; the real recipe runs.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from layerlake import queries
from layerlake.core.errors import ParameterError
from layerlake.warehouse import macros, schema
from layerlake.warehouse.gram import to_bytes

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "recipes"
CASES = sorted(p.stem for p in FIXTURES.glob("*.json"))
CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}


def connection(inputs: dict[str, list[dict]]) -> duckdb.DuckDBPyConnection:
    """In-memory DuckDB with one view per warehouse table (fixture rows, or empty) and the macros."""
    con = duckdb.connect(config=CONFIG)
    for name, spec in schema.TABLES.items():
        rows = [
            {"run_id": f"{r['suite']}.{r['model']}", **r} for r in inputs.get(name, [])
        ]  # the default run
        for column in spec.all_columns:  # JSON holds timestamps as ISO text
            if column.type == schema.TIMESTAMP:
                rows = [{**r, column.name: datetime.fromisoformat(r[column.name])} for r in rows]
        for column in spec.all_columns:  # a list stored as bytes shows as both (gram and gram_bytes)
            if column.stored_as_bytes:
                rows = [{**r, column.bytes_name: to_bytes(r[column.name])} for r in rows]
        table = pa.Table.from_pylist(rows, schema=spec.view_schema())
        con.register(name, table)
    macros.install(con)
    return con


def load_inputs(name: str) -> dict[str, list[dict]]:
    return json.loads((FIXTURES / "inputs" / f"{name}.json").read_text())


def same(actual, expected, tolerance: float = 1e-5) -> bool:
    if isinstance(expected, float) and actual is not None:
        return math.isclose(actual, expected, rel_tol=tolerance, abs_tol=tolerance)
    return actual == expected


def test_every_recipe_has_a_fixture():
    covered = {json.loads((FIXTURES / f"{c}.json").read_text())["recipe"] for c in CASES}
    assert covered == set(queries.recipe_names())


@pytest.mark.parametrize("case", CASES)
def test_recipe_fixture(case):
    fixture = json.loads((FIXTURES / f"{case}.json").read_text())
    con = connection(load_inputs(fixture["input"]))
    result = queries.run_recipe(con, fixture["recipe"], fixture["params"]).to_pylist()
    expected = fixture["expected"]
    assert expected, "a fixture must expect rows"
    columns = list(expected[0])
    actual = [{c: row[c] for c in columns} for row in result]
    assert len(actual) == len(expected), f"{case}: {len(actual)} rows, expected {len(expected)}"
    for got, want in zip(actual, expected, strict=True):
        assert all(same(got[c], want[c]) for c in columns), f"{case}: got {got}, expected {want}"


def test_fixture_that_would_catch_a_wrong_estimator():
    # The same sketches under the other estimator give other numbers: the fixtures pin the estimator.
    fixture = json.loads((FIXTURES / "convergence_debiased.json").read_text())
    con = connection(load_inputs("sketches"))
    rows = queries.run_recipe(con, "convergence", {**fixture["params"], "estimator": "biased"}).to_pylist()
    biased = {(r["site"], r["layer"], r["step"]): r["cka"] for r in rows if r["probe_id"] == "probe-fx"}
    expected = {(r["site"], r["layer"], r["step"]): r["cka"] for r in fixture["expected"]}
    assert biased.keys() == expected.keys()
    assert (
        sum(not same(biased[k], v) for k, v in expected.items()) == len(expected) - 4
    )  # all but the reference


def test_per_head_rows_are_kept_apart():
    con = connection(load_inputs("sketches"))
    rows = queries.run_recipe(con, "convergence", {"per_head": True}).to_pylist()
    assert {(r["model"], r["layer"], r["site"], r["head"], r["step"]) for r in rows} == {
        ("tiny-a", 0, "ov", 0, 10)
    }
    # its only reference is itself (no head-0 sketch at step 40 exists): CKA to itself is 1
    assert rows[0]["reference_step"] == 40 or rows[0]["cka"] == pytest.approx(1.0)


def test_sources_side_by_side():
    con = connection(load_inputs("curves"))
    rows = queries.run_recipe(con, "layer_percentiles", {"source": None}).to_pylist()
    assert {r["source"] for r in rows} == {"fixture-paper", "elsewhere"}
    assert {r["suite"] for r in rows} == {"fx", "other"}


@pytest.mark.parametrize(
    ("group_by", "message"),
    [
        (
            "optim.lrr",
            "group_by 'optim.lrr' is not a key of the runs' config (for suite fx) (did you mean 'optim.lr'?)",
        ),
        ("optim", "group_by 'optim' is not a key"),  # a section, not a value
        ("lr", "use one of: optim.lr, seed"),
    ],
)
def test_group_by_must_name_a_key_of_the_runs_config(group_by, message):
    con = connection(load_inputs("runs"))
    with pytest.raises(ParameterError) as error:
        queries.run_recipe(con, "stabilisation_across_runs", {"suite": "fx", "group_by": group_by})
    assert message in f"{error.value.message} {error.value.fix}"


def test_group_by_null_puts_every_run_of_a_model_together():
    con = connection(load_inputs("runs"))
    rows = queries.run_recipe(con, "stabilisation_across_runs", {"suite": "fx", "threshold": 0.8}).to_pylist()
    assert {r["group_value"] for r in rows} == {None} and {r["n_runs"] for r in rows} == {2}


def test_a_layer_without_any_cka_counts_in_rank_and_convergence_as_a_layer_not_there():
    # its convergence is unknown: neither a disagreement of "good CKA" with "good PER" nor a layer that
    # never stabilised (it counted as both)
    fixture = json.loads((FIXTURES / "rank_and_convergence.json").read_text())

    def rows(change) -> list[dict]:
        inputs = load_inputs(fixture["input"])
        inputs["imported_metrics"] = [change(r) for r in inputs["imported_metrics"]]
        con = connection({k: [r for r in v if r is not None] for k, v in inputs.items()})
        return queries.run_recipe(con, fixture["recipe"], fixture["params"]).to_pylist()

    def layer_2_of_mlp_out(row: dict) -> bool:
        return row["layer"] == 2 and row["site"] == "mlp_out"

    without_cka = rows(lambda r: {**r, "value": None} if layer_2_of_mlp_out(r) else r)
    absent = rows(lambda r: None if layer_2_of_mlp_out(r) else r)
    whole = rows(lambda r: r)
    assert without_cka == absent
    assert [r["n_layers"] for r in without_cka] == [4, 5] and [r["n_layers"] for r in whole] == [5, 5]
    assert without_cka[1] == whole[1]  # the other site is untouched
