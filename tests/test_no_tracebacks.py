"""Inputs that once ended in a Python traceback: each is now a ``LayerlakeError`` (message and fix, exit
2), or, for text from data that looks like rich markup (``[/x]``), printed as it is.

Every case runs the real command (``layerlake.cli.main.main``) on a real warehouse, file or suite.
"""

from __future__ import annotations

import io
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hostile_data import rewrite_header
from rich.console import Console

from layerlake.cli.main import main
from layerlake.warehouse.synthetic import checkpoint_tables
from layerlake.warehouse.writer import Warehouse

MARKUP = "[/x]"  # a closing tag that opens nothing: rich raises MarkupError when it reads it as markup


@pytest.fixture
def root(tmp_path) -> str:
    w = Warehouse(tmp_path / "wh")
    for step in (0, 1):
        tables = checkpoint_tables("m", step, {(0, "mlp_out"): np.eye(3)}, {(0, "dense"): [4.0, 1.0]}, d=4)
        w.commit(f"t{step}", "s", "m", tables, {})
    return str(w.root)


def refused(capsys, *argv: str) -> str:
    """Run ``layerlake argv``; it must exit 2 with an error and a fix (and no traceback); its stderr."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "error:" in err and "fix:" in err and "Traceback" not in err
    return err.replace("\n", " ")


# -- layerlake sql ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    ["/* c */ explain select 1", "/* explain */ explain select 1", "explain (format json) select 1"],
)
def test_explain_after_a_comment_or_with_options_runs(root, statement, capsys):
    assert main(["sql", statement, "--root", root]) == 0
    assert "explain" in capsys.readouterr().out.lower()


@pytest.mark.parametrize("statement", ["update extensions", "/* c */ explain update extensions"])
def test_statement_kinds_unknown_to_the_python_enum_are_refused(root, statement, capsys):
    err = refused(capsys, "sql", statement, "--root", root)
    assert "read-only" in err and "update extensions" in err


# -- layerlake share export -----------------------------------------------------------------------------


def test_unknown_table_to_export_names_the_tables(root, tmp_path, capsys):
    err = refused(capsys, "share", "export", str(tmp_path / "out"), "--root", root, "--tables", "nosuch")
    assert "nosuch" in err and "activation_stats" in err


@pytest.mark.parametrize(
    "args,message",
    [
        (("import", "ftp://example.com/x"), "the URL scheme ftp:// is not supported"),
        (("attach", "s3://bucket/x"), "the URL scheme s3:// is not supported"),
        (("import", "{file}"), "is a file, not a shared dataset folder"),
        (("import", "{shared}", "--http-timeout", "nan"), "--http-timeout nan is not a time limit"),
        (("attach", "{shared}", "--http-timeout", "inf"), "--http-timeout inf is not a time limit"),
    ],
)
def test_a_shared_dataset_that_cannot_be_read_is_named(root, tmp_path, capsys, args, message):
    shared, file = tmp_path / "shared", tmp_path / "file.txt"
    assert main(["share", "export", str(shared), "--root", root]) == 0
    file.write_text("not a dataset")
    capsys.readouterr()
    argv = [a.format(shared=shared, file=file) for a in args]
    err = refused(capsys, "share", *argv, "--root", root)
    assert message in err and "ftp:/example.com" not in err


# -- layerlake import-metrics -----------------------------------------------------------------------------

HEADER = "model,step,layer,site,metric,value\n"


def import_file(tmp_path: Path, path: Path, *extra: str) -> list[str]:
    return [
        "import-metrics",
        str(path),
        "--source",
        "s",
        "--suite",
        "s",
        "--root",
        str(tmp_path / "wh"),
        *extra,
    ]


def test_a_step_too_large_for_int64_is_refused(tmp_path, capsys):
    path = tmp_path / "m.csv"
    path.write_text(HEADER + f"m,{10**23},0,ov,cka,0.5\n")
    err = refused(capsys, *import_file(tmp_path, path))
    assert "'step'" in err and str(10**23) in err


def test_a_float_step_of_1e23_in_parquet_is_refused(tmp_path, capsys):
    path = tmp_path / "m.parquet"
    pq.write_table(
        pa.table(
            {"model": ["m"], "step": [1e23], "layer": [0], "site": ["ov"], "metric": ["c"], "value": [0.5]}
        ),
        path,
    )
    err = refused(capsys, *import_file(tmp_path, path))
    assert "'step'" in err and "1e+23" in err


def test_non_utf8_csv_is_refused_naming_the_byte(tmp_path, capsys):
    path = tmp_path / "m.csv"
    path.write_bytes(HEADER.encode() + b"m\xff\xfe,1,0,ov,cka,0.5\n")
    err = refused(capsys, *import_file(tmp_path, path))
    assert "not UTF-8" in err and "0xff" in err


def test_non_utf8_text_in_parquet_is_refused(tmp_path, capsys):
    path = tmp_path / "m.parquet"
    model = pa.array([b"m\xff"], pa.binary())
    pq.write_table(
        pa.table(
            {"model": model, "step": [1], "layer": [0], "site": ["ov"], "metric": ["c"], "value": [0.5]}
        ),
        path,
    )
    err = refused(capsys, *import_file(tmp_path, path))
    assert "'model'" in err and "UTF-8" in err


@pytest.mark.parametrize(
    "text,args,message",
    [
        (
            "model,step,layer,site,metric,value,value\nm,1,0,ov,cka,0.5,0.6\n",
            (),
            "more than one column named 'value'",
        ),
        (HEADER, (), "holds no rows (a header only)"),
        (HEADER + "m,1,0,ov,cka,0.5\n", ("--source", "computed"), "--source 'computed' is reserved"),
        (HEADER + "m,1,0,ov,cka,0.5\n", ("--suite", ""), "suite ''"),
    ],
)
def test_a_metrics_file_or_name_that_cannot_be_imported_is_refused_and_stores_nothing(
    tmp_path, capsys, text, args, message
):
    # a duplicated column was a KeyError traceback; a header only imported nothing with exit 0; the
    # source 'computed' mixed its rows into the computed curves; --suite "" became the configured suite
    path = tmp_path / "m.csv"
    path.write_text(text)
    err = refused(capsys, *import_file(tmp_path, path), *args)
    assert message in err
    assert not (tmp_path / "wh" / "_manifest" / "commits.jsonl").exists()


def test_a_site_that_looks_like_markup_is_printed_as_is(tmp_path, capsys):
    path = tmp_path / "m.csv"
    path.write_text(HEADER + f"m,1,0,{MARKUP},cka,0.5\n")
    assert main(import_file(tmp_path, path)) == 0
    assert f"sites: {MARKUP}" in capsys.readouterr().out


# -- markup in data: sql, query, share attach ----------------------------------------------------------------


def test_sql_prints_markup_in_cells_and_headers_as_text(root, capsys):
    assert main(["sql", f"select '{MARKUP}' as a, 1 as \"{MARKUP}\"", "--root", root]) == 0
    assert capsys.readouterr().out.count(MARKUP) == 2


def test_share_attach_prints_markup_as_text(root, tmp_path, capsys):
    out = tmp_path / "shared"
    assert main(["share", "export", str(out), "--root", root]) == 0
    assert main(["share", "attach", str(out), "--root", root, "--sql", f"select '{MARKUP}' as a"]) == 0
    assert MARKUP in capsys.readouterr().out


def test_query_prints_an_imported_site_that_looks_like_markup(tmp_path, capsys):
    path = tmp_path / "m.csv"
    path.write_text(HEADER + "".join(f"m,{s},0,{MARKUP},cka,{v}\n" for s, v in ((0, 0.5), (10, 1.0))))
    assert main(import_file(tmp_path, path)) == 0
    args = ["query", "convergence", "source=s", "suite.name=s", f"paths.data={tmp_path}"]
    assert main([*args, f"paths.warehouse={tmp_path / 'wh'}"]) == 0
    assert MARKUP in capsys.readouterr().out


def test_recipe_blocks_print_markup_in_their_header_as_text(tmp_path):
    from layerlake.queries.command import recipe_block
    from layerlake.queries.loader import load_recipe

    (tmp_path / "odd.sql").write_text(
        f"-- name: odd\n-- description: rows {MARKUP} of nothing\n-- param: $k integer = 1 | k {MARKUP}\n"
        "select $k as k\n"
    )
    console = Console(file=io.StringIO(), width=80)
    console.print(recipe_block(load_recipe("odd", tmp_path)))
    assert console.file.getvalue().count(MARKUP) == 2


# -- the extraction side: suite show and build, extract's report, progress lines --------------------------


@pytest.fixture
def odd_data(tiny_suite, tmp_path) -> Path:
    """A copy of the tiny suite under a data folder whose path holds ``[/x]``."""
    settings, suites = tiny_suite
    data = tmp_path / "[" / "x]"  # the path .../[/x]/...
    shutil.copytree(suites, data / "suites")
    assert MARKUP in str(data)
    return data


def test_suite_show_prints_a_model_named_like_markup(tiny_overrides, tmp_path, capsys):
    models = f"suite.models=[{{name:'{MARKUP}',n_layers:1,d_model:32,n_heads:2}}]"
    assert main(["suite", "show", f"paths.data={tmp_path}", *tiny_overrides, models]) == 0
    assert MARKUP in capsys.readouterr().out


def test_suite_build_prints_a_path_with_markup(odd_data, tiny_overrides, capsys):
    assert main(["suite", "build", f"paths.data='{odd_data}'", *tiny_overrides]) == 0
    out = capsys.readouterr().out.replace("\n", "")
    assert "tiny-a: reuse" in out and f"{MARKUP}/suites/embedded" in out


def test_extract_reports_a_warehouse_path_with_markup(odd_data, tiny_overrides, capsys):
    args = ["extract", f"paths.data='{odd_data}'", *tiny_overrides, "steps.only=[0]", "models=[tiny-a]"]
    assert main([*args, "progress=true"]) == 0
    captured = capsys.readouterr()
    assert f"{MARKUP}/warehouse" in (captured.out + captured.err).replace("\n", "")
    assert "ok tiny-a step0" in captured.err


def test_progress_lines_print_model_names_and_errors_as_text(tiny_suite):
    from layerlake.etl.executors import Outcome
    from layerlake.etl.plan import make_plan
    from layerlake.etl.progress import ExtractProgress

    settings, _ = tiny_suite
    task = make_plan(replace(settings, models=["tiny-a"], steps=replace(settings.steps, only=[0]))).tasks[0]
    task = replace(task, ref=replace(task.ref, model=MARKUP))
    console = Console(file=io.StringIO(), width=120)
    with ExtractProgress({MARKUP: 1}, enabled=True, console=console) as progress:
        progress.advance(Outcome(task, None, f"cannot load {MARKUP}", None))
    assert console.file.getvalue().count(MARKUP) >= 2


def test_a_corrupt_tokenizer_is_an_error_and_suite_build_repairs_it(odd_data, tiny_overrides, capsys):
    tokenizer = odd_data / "suites/embedded/tokenizer.json"
    good = tokenizer.read_bytes()
    tokenizer.write_bytes(good[: len(good) // 2])
    err = refused(capsys, "extract", f"paths.data='{odd_data}'", *tiny_overrides, "steps.only=[0]")
    assert "tokenizer.json is corrupt" in err and "layerlake suite build" in err
    assert main(["suite", "build", f"paths.data='{odd_data}'", *tiny_overrides]) == 0
    out = capsys.readouterr().out.replace("\n", "")
    assert "tiny-a: reuse" in out and "tiny-b: reuse" in out  # trained again to the same bytes
    assert tokenizer.read_bytes() == good


# -- layerlake ui ------------------------------------------------------------------------------------


@pytest.mark.parametrize("port", ["99999", "-1", "http"])
def test_a_port_out_of_range_is_refused_by_the_parser(root, port, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["ui", "--root", root, "--port", port])
    assert stopped.value.code == 2
    assert "is not a port number (0 to 65535" in capsys.readouterr().err


@pytest.mark.parametrize("host", ["999.1.1.1", "10.255.1.1"])
def test_a_host_that_is_no_address_of_this_machine_is_named_not_the_port(root, host, capsys):
    err = refused(capsys, "ui", "--root", root, "--host", host, "--port", "0", "--no-warm-up")
    assert f"cannot listen on {host}:0" in err and "give --host an address of this machine" in err


def test_weights_that_lie_fail_their_own_task_with_a_fix_and_the_stored_rows_stay(
    tiny_suite, tiny_overrides, tmp_path, capsys
):
    # a header declaring I32 for a float32 weight stored garbage with exit 0; a header that is a JSON list
    # failed with a bare AttributeError; the final report said "with other extraction options" of
    # checkpoints whose weights had changed
    import re

    from layerlake import warehouse

    _, suites = tiny_suite
    shutil.copytree(suites, tmp_path / "suites")
    args = ["extract", f"paths.data={tmp_path}", *tiny_overrides, "models=[tiny-a]", "steps.only=[0,4,8,16]"]
    assert main(args) == 0
    query = "select step, count(*), any_value(weights_sha256) from spectra group by step order by step"
    before = warehouse.connect(str(tmp_path / "warehouse")).sql(query).fetchall()
    folder = tmp_path / "suites" / "embedded" / "tiny-a"
    rewrite_header(
        folder / "step4" / "model.safetensors",
        lambda h: h["gpt_neox.layers.0.mlp.dense_4h_to_h.weight"].update(dtype="I32"),
    )
    blob = (folder / "step8" / "model.safetensors").read_bytes()
    listed = b"[1, 2, 3]".ljust(16)
    (folder / "step8" / "model.safetensors").write_bytes(
        len(listed).to_bytes(8, "little") + listed + blob[8:]
    )
    shutil.copyfile(folder / "step24" / "model.safetensors", folder / "step16" / "model.safetensors")
    capsys.readouterr()
    assert main(args) == 1
    captured = capsys.readouterr()
    said = re.sub(r"[│┃\s]+", " ", captured.out + captured.err)
    assert "Traceback" not in said and said.count("fix:") == 2
    assert "gpt_neox.layers.0.mlp.dense_4h_to_h.weight (I32; the model holds float32)" in said
    assert "is corrupt: unreadable header (a JSON list, not an object of tensors)" in said
    assert (
        "3 checkpoint(s) were extracted before with other extraction options or from checkpoint files that "
        "changed since (weights or config.json)" in said
    )
    assert (
        "3 checkpoint(s) had been extracted before, 3 from checkpoint files that changed since (weights or "
        "config.json): extracted again, the rows of each one that committed replaced" in said
    )
    after = warehouse.connect(str(tmp_path / "warehouse")).sql(query).fetchall()
    assert after[:3] == before[:3]  # the failed checkpoints keep their rows; step 16 has its new weights'
    assert after[3][:2] == before[3][:2] and after[3][2] != before[3][2]
