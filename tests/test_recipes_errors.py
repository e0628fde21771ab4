"""A recipe is refused unless it is one read-only query whose declared and used parameters agree, and a
parameter value is refused unless it fits its declared type: clear errors, nothing run or written."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from layerlake import queries
from layerlake.cli.main import main
from layerlake.queries.command import rewrite_args
from layerlake.queries.errors import ParameterError, RecipeError
from layerlake.queries.imports import import_table, validate
from layerlake.queries.loader import CONTEXT_PARAMS, register_recipe_configs
from layerlake.warehouse import macros

BAD = Path(__file__).resolve().parent / "fixtures" / "recipes" / "bad"
CONFIG = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("writes", "not a single read-only query"),
        ("two_statements", "not a single read-only query"),
        ("copies", "not a single read-only query"),
        ("undeclared", "the SQL uses ['x', 'y']"),
        ("unused", "declared parameters ['x', 'y']"),
        ("wrong_name", "header says name 'something_else'"),
        ("bad_default", "parameter $x is not a valid value ('abc'): expected an integer"),
        ("bad_range", "a range ([0, 1]) needs a number type, not 'varchar'"),
        ("default_outside", "parameter $x is outside [0, 1] (1.5)"),
        ("reversed_range", "malformed range '[1, 0]'"),
        ("no_such_recipe", "unknown recipe 'no_such_recipe'"),
        ("../etc/passwd", "unknown recipe"),
    ],
)
def test_loader_refuses(name, message):
    with pytest.raises(RecipeError) as error:
        queries.load_recipe(name, BAD)
    assert message in str(error.value)


def test_unknown_recipe_lists_the_known_ones():
    with pytest.raises(RecipeError) as error:
        queries.load_recipe("stabilization")
    assert "stabilisation" in error.value.fix


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"x": "0.9; drop table sketches"},
            "$x is not a valid value ('0.9; drop table sketches'): expected a finite number",
        ),
        ({"x": "abc"}, "$x is not a valid value ('abc')"),
        ({"x": float("nan")}, "expected a finite number"),
        ({"x": True}, "expected a finite number"),
        ({"n": 1.5}, "$n is not a valid value (1.5): expected an integer"),
        ({"x": 1.5}, "$x is outside [0, 1] (1.5): expected a finite number in [0, 1]"),
        ({"x": "-0.01"}, "$x is outside [0, 1] (-0.01)"),
        ({"n": 0}, "$n is outside (0, inf) (0): expected an integer (64-bit) in (0, inf)"),
        ({"who": "m1"}, "$who is not a list ('m1')"),
        ({"who": ["m1", "x'; drop table t; --"]}, "expected a list of [a name"),
        ({"mode": "c"}, "expected one of a, b"),
        ({"flag": "yes"}, "expected true or false"),
        ({"must": None}, "$must is required (missing)"),
        ({"y": 1}, "unknown parameter(s) y for recipe 'ok'"),
    ],
)
def test_bad_parameter_values(params, message):
    recipe = queries.load_recipe("ok", BAD)
    given = {"must": "m", **params}
    with pytest.raises(ParameterError) as error:
        queries.bind_params(recipe, given)
    assert message in str(error.value)


def test_good_parameter_values_are_converted():
    recipe = queries.load_recipe("ok", BAD)
    bound = queries.bind_params(recipe, {"must": "m", "x": 1, "n": "4", "who": ("a", "b-1.4b")})
    assert bound == {
        "x": 1.0,  # the closed end of [0, 1]
        "n": 4,
        "who": ["a", "b-1.4b"],
        "mode": "a",
        "flag": False,
        "label": "hi",
        "must": "m",
    }
    con = duckdb.connect(config=CONFIG)
    row = queries.run_recipe(con, "ok", {"must": "m", "who": ["a"]}, BAD).to_pylist()[0]
    assert row == {"x": 0.5, "n": 3, "who": ["a"], "mode": "a", "flag": False, "label": "hi", "must": "m"}


def test_a_refused_value_runs_nothing():
    con = duckdb.connect(config=CONFIG)
    con.register("sketches", pa.table({"x": [1, 2]}))
    macros.install_functions(con)
    with pytest.raises(ParameterError):
        queries.run_recipe(con, "stabilisation", {"threshold": "0.9; drop view sketches"})
    assert con.sql("select count(*) from sketches").fetchall() == [(2,)]


def test_every_recipe_loads_with_its_metadata():
    for recipe in queries.list_recipes():
        assert recipe.description and recipe.grain and recipe.plot, recipe.name
        assert recipe.sql.rstrip().endswith("select * from final"), recipe.name


def test_every_recipe_composes_with_hydra_from_its_header_alone(compose, tmp_path):
    """The parameters are declared once, in the SQL header: the Hydra config is made from it."""
    register_recipe_configs()
    for recipe in queries.list_recipes():
        settings = compose(tmp_path, f"+recipe={recipe.name}")
        assert settings.recipe.name == recipe.name
        header = {p.name: p.default for p in recipe.params if p.name not in CONTEXT_PARAMS}
        assert dict(settings.recipe.params) == header, recipe.name


def test_rewrite_args():
    args = rewrite_args(
        ["recipe=stabilisation", "threshold=0.8,0.9", "suite=pythia", "models=[a]", "paths.data=/x", "-m"]
    )
    assert args == [
        "+recipe=stabilisation", "++recipe.params.threshold=0.8,0.9", "suite=pythia", "models=[a]", "paths.data=/x", "-m",
    ]  # fmt: skip
    assert rewrite_args(["-m", "stabilised_share", "by_fraction=0.1"])[1:] == [
        "+recipe=stabilised_share", "++recipe.params.by_fraction=0.1",
    ]  # fmt: skip
    with pytest.raises(Exception) as error:
        rewrite_args(["recipe=stabilisation", "treshold=0.9"])
    assert (
        "'treshold' is neither a parameter of recipe stabilisation nor a config key (did you mean 'threshold'?)"
        in str(error.value)
    )
    assert rewrite_args(["recipe=stabilisation", "--max-rows", "50"])[-1] == "++recipe.max_rows=50"
    assert rewrite_args(["recipe=stabilisation", "--max-rows=5", "--all"])[-2:] == [
        "++recipe.max_rows=5", "++recipe.max_rows=null",
    ]  # fmt: skip
    for bad in (["--max-rows"], ["--max-rows", "0"], ["--max-rows=all"]):
        with pytest.raises(Exception, match="--max-rows"):
            rewrite_args(["recipe=stabilisation", *bad])


def curves_warehouse(root: Path) -> None:
    rows = pa.table({
        "model": ["m1"] * 4, "step": [0, 10, 0, 10], "layer": [0, 0, 1, 1], "site": ["ov"] * 4,
        "metric": ["cka_scores"] * 4, "value": [0.5, 1.0, 0.95, 1.0],
    })  # fmt: skip
    import_table(validate(rows, {}, "test"), root, "embedded", "fx", {})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["query", "no_such_recipe"], "unknown recipe 'no_such_recipe'"),
        (
            ["query", "stabilisation", "threshold=0.9; drop table sketches"],
            "parameter $threshold is not a valid value",
        ),
        (["query", "stabilisation", "threshold=abc"], "expected a finite number"),
        (["query", "stabilisation", "threshold=1.5"], "parameter $threshold is outside [0, 1] (1.5)"),
        (["query", "stabilisation", "treshold=0.8"], "(did you mean 'threshold'?)"),
        (["query", "step_similarity"], "parameter $model is required"),
        (["query", "stabilisation", "bogus=1"], "'bogus' is neither a parameter"),
        (["query", "stabilisaton"], "unknown recipe 'stabilisaton' (did you mean 'stabilisation'"),
        # a value naming something the warehouse does not hold, with the nearest stored ones
        (
            ["query", "step_similarity", "model=m11"],
            "model 'm11' is not in the warehouse (for suite embedded) (did you mean 'm1'?)",
        ),
        (["query", "stabilisation", "models=[m1,m9]"], "models 'm9' is not in the warehouse"),
        (
            ["query", "stabilisation", "source=fy"],
            "source 'fy' is not in the warehouse (for suite embedded) (nearest: 'fx', 'computed')",
        ),
        (
            ["query", "stabilisation", "source=fx", "reference_step=12"],
            "reference_step 12 is not in the warehouse (for suite embedded) (nearest: 10, 0)",
        ),
        (["query", "stabilisation", "sites=[]"], "sites=[] names no site: the recipe would return no rows"),
        (
            ["query", "stabilisation", "sites=[ovv]"],
            "sites 'ovv' is not in the warehouse (for suite embedded) (did you mean 'ov'?)",
        ),
        (
            ["query", "step_similarity", "model=m1", "layer=7"],
            "layer 7 is not in the warehouse (for suite embedded; model m1) (nearest: 1, 0)",
        ),
        (["query", "step_similarity", "model=m1", "site=mlp_out"], "site 'mlp_out' is not in the warehouse"),
        (
            ["query", "stabilisation", "suite=embeded"],
            "suite 'embeded' is not in the warehouse (did you mean 'embedded'?)",
        ),
    ],
)
def test_cli_errors_change_nothing(tmp_path, capsys, args, message):
    curves_warehouse(tmp_path / "warehouse")
    manifest = (tmp_path / "warehouse" / "_manifest" / "commits.jsonl").read_bytes()
    code = main([*args, f"paths.data={tmp_path}", f"hydra.run.dir={tmp_path}/run"])
    assert code == 2
    assert message in capsys.readouterr().err.replace("\n", " ")
    assert (tmp_path / "warehouse" / "_manifest" / "commits.jsonl").read_bytes() == manifest
    written = (
        sorted(p.name for p in (tmp_path / "run").glob("result.*")) if (tmp_path / "run").exists() else []
    )
    assert written == []
    if (tmp_path / "run" / "job.json").exists():  # the failure is recorded where the job ran
        assert json.loads((tmp_path / "run" / "job.json").read_text())["status"] == "failed"


def test_cli_query_writes_result_and_plot(tmp_path, capsys):
    curves_warehouse(tmp_path / "warehouse")
    code = main(
        [
            "query",
            "stabilisation",
            "source=fx",
            "threshold=0.9",
            f"paths.data={tmp_path}",
            f"hydra.run.dir={tmp_path}/run",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "run" / "result.parquet") in out
    import pyarrow.parquet as pq

    rows = pq.read_table(tmp_path / "run" / "result.parquet").to_pylist()
    assert [(r["layer"], r["stabilisation_step"]) for r in rows] == [(0, 10), (1, 0)]
    assert (tmp_path / "run" / "result.csv").read_text().startswith('"suite"')
    assert (tmp_path / "run" / "stabilisation.png").stat().st_size > 1000
    assert main(["recipes"]) == 0
    assert "layer_percentiles" in capsys.readouterr().out


def test_query_shows_the_rows_asked_for_and_says_how_to_see_the_rest(tmp_path, capsys, monkeypatch):
    """layer_percentiles over 2 checkpoints x 1 site gives 2 rows: --max-rows 1 shows one and says how to see
    the other; --all shows both; a bad --max-rows is refused before anything runs."""
    monkeypatch.setenv("COLUMNS", "200")
    curves_warehouse(tmp_path / "warehouse")
    common = ["query", "layer_percentiles", "source=fx", f"paths.data={tmp_path}", "plot.format=none"]
    assert main([*common, "--max-rows", "1", f"hydra.run.dir={tmp_path}/one"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "2 rows (showing 1; --max-rows N or --all to show more; every row is in result.csv)" in out
    assert main([*common, "--all", f"hydra.run.dir={tmp_path}/all"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "2 rows" in out and "showing" not in out
    assert main([*common, "--max-rows", "none", f"hydra.run.dir={tmp_path}/bad"]) == 2
    assert "--max-rows 'none' is not a number of rows" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_a_warehouse_of_tracked_runs_only_needs_no_suite_named(tmp_path, capsys, monkeypatch):
    """The configured suite (embedded) has no rows: query reads every suite held and says so; a suite
    named on the command line is still checked."""
    import layerlake

    monkeypatch.setenv("COLUMNS", "200")
    for seed in (1, 2):
        with layerlake.track(
            suite="mine", model_name="m", run_id=f"m-{seed}", warehouse=tmp_path / "warehouse"
        ) as run:
            for step in range(3):
                run.log(step, loss=3.0 - step - seed / 10)
    common = ["query", "loss_and_convergence", f"paths.data={tmp_path}", "plot.format=none"]
    assert main([*common, f"hydra.run.dir={tmp_path}/a"]) == 0
    said = capsys.readouterr()
    assert "reading every suite the warehouse holds (mine)" in " ".join(said.err.split())
    assert "6 rows" in said.out and "m-2" in said.out
    assert main([*common, "suite=embedded", f"hydra.run.dir={tmp_path}/b"]) == 2  # named: checked, refused
    assert "suite 'embedded'" in capsys.readouterr().err


def test_a_step_only_a_logged_scalar_holds_is_not_a_checkpoint_to_compare_with(tmp_path, capsys):
    """A tracked run logs scalars at every step; CKA needs a checkpoint's Grams: step 12, logged but not a
    checkpoint, gave no rows and exit 0."""
    import layerlake

    curves_warehouse(tmp_path / "warehouse")
    with layerlake.track(
        suite="embedded", model_name="m1", run_id="r", warehouse=tmp_path / "warehouse"
    ) as run:
        run.log(12, loss=1.0)
    common = [f"paths.data={tmp_path}", f"hydra.run.dir={tmp_path}/run", "plot.format=none"]
    assert main(["query", "stabilisation", "source=fx", "reference_step=12", *common]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "reference_step 12 is not in the warehouse" in err and "0, 10" in err
    assert main(["query", "model_similarity", "step=12", *common]) == 2
    assert "step 12 is not in the warehouse" in " ".join(capsys.readouterr().err.split())


def test_stored_values_are_checked_through_the_python_api_too(tmp_path):
    from layerlake import warehouse

    curves_warehouse(tmp_path)
    con = warehouse.connect(tmp_path)
    try:
        with pytest.raises(ParameterError, match="model 'M1' is not in the warehouse") as error:
            queries.run_recipe(con, "step_similarity", {"model": "M1"})
        assert "use one of the stored values: m1" in error.value.fix
        rows = queries.run_recipe(
            con, "stabilisation", {"source": "fx", "reference_step": 10, "models": ["m1"]}
        )
        assert rows.num_rows == 2  # stored values pass
    finally:
        con.close()


def test_a_logged_scalar_is_checked_once_scalars_are_stored():
    import duckdb

    from layerlake.queries.stored_values import check_stored_values

    con = duckdb.connect()
    con.execute(
        "create table scalars (suite varchar, model varchar, run_id varchar, step bigint, name varchar)"
    )
    check_stored_values(con, {"scalar": "loss"})  # checkpoints alone log nothing: the recipe shows the rest
    con.execute("insert into scalars values ('s', 'm', 'r', 0, 'loss'), ('s', 'm', 'r', 0, 'lr')")
    check_stored_values(con, {"scalar": "lr"})
    with pytest.raises(ParameterError, match="scalar 'los' is not in the warehouse .did you mean 'loss'"):
        check_stored_values(con, {"scalar": "los"})
    con.execute("insert into scalars values ('t', 'm', 'r2', 0, 'loss')")
    with pytest.raises(ParameterError, match=r"scalar 'lr' is not in the warehouse \(for suite t\)"):
        check_stored_values(con, {"suite": "t", "scalar": "lr"})  # looked up within the suite chosen


def test_an_estimator_or_kernel_never_extracted_is_named(tmp_path):
    import numpy as np

    from layerlake import warehouse
    from layerlake.warehouse.synthetic import checkpoint_tables
    from layerlake.warehouse.writer import Warehouse

    store = Warehouse(tmp_path)
    for step in (0, 10):
        grams = {(0, "ov"): np.cov(np.random.default_rng(step).normal(size=(6, 8)))}
        store.commit(
            f"t{step}", "s", "m", checkpoint_tables("m", step, grams, {(0, "dense"): [2.0, 1.0]}, d=8), {}
        )
    con = warehouse.connect(tmp_path)
    try:
        with pytest.raises(ParameterError, match="estimator 'debiased' is not in the warehouse") as error:
            queries.run_recipe(con, "step_similarity", {"model": "m", "site": "ov", "estimator": "debiased"})
        assert "biased" in error.value.fix
        with pytest.raises(ParameterError, match="tensor 'grad' is not in the warehouse"):
            queries.run_recipe(con, "rank_trajectories", {"tensor": "grad"})
        assert queries.run_recipe(con, "step_similarity", {"model": "m", "site": "ov"}).num_rows == 4
    finally:
        con.close()
