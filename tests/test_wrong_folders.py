"""Wrong folders are refused and nothing is created by reading; where data goes is one rule.

A warehouse is a folder holding ``_manifest/`` (``warehouse.locate``). Every reading command given
another folder (the data folder above the warehouse, an empty one, one that does not exist, a shared
dataset, a folder inside a warehouse) exits 2 naming the nearest warehouse, and the whole tree is the
same after it as before (a snapshot of every path, size and byte). Writing commands still make a new
warehouse where asked. The default data folder is ``$LAYERLAKE_DATA``, else ``./data`` under the
working directory, however layerlake is installed, and ``layerlake --version`` says which.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import layerlake
from layerlake.cli.main import main
from layerlake.warehouse.errors import WarehouseError
from layerlake.warehouse.locate import is_warehouse, nearest_warehouses
from layerlake.warehouse.synthetic import checkpoint_tables
from layerlake.warehouse.writer import Warehouse


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A working directory holding ``data/warehouse`` with two checkpoints; ``$LAYERLAKE_DATA`` unset."""
    monkeypatch.delenv("LAYERLAKE_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    store = Warehouse(tmp_path / "data" / "warehouse")
    for step in (0, 1):
        tables = checkpoint_tables("m", step, {(0, "mlp_out"): np.eye(3)}, {(0, "dense"): [4.0, 1.0]}, d=4)
        store.commit(f"t{step}", "s", "m", tables, {"step": step})
    (store.root / "_staging").rmdir()  # as a copied warehouse may come: a reader must not make it
    return tmp_path


def snapshot(top: Path) -> dict[str, tuple]:
    """Every path under ``top``: folders by name, files by size and content hash."""
    found = {}
    for folder, dirs, files in os.walk(top):
        for name in dirs:
            found[os.path.relpath(Path(folder, name), top)] = ("dir",)
        for name in files:
            path = Path(folder, name)
            found[os.path.relpath(path, top)] = (
                path.stat().st_size,
                hashlib.sha256(path.read_bytes()).hexdigest(),
            )
    return found


def refused(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "fix:" in err
    return " ".join(err.split())


READS = {
    "sql": lambda root: ["sql", "select count(*) from spectra", "--root", root],
    "sql --schema": lambda root: ["sql", "--schema", "--root", root],
    "check": lambda root: ["check", "--root", root],
    "runs": lambda root: ["runs", "--root", root],
    "ui": lambda root: ["ui", "--root", root, "--port", "0", "--no-warm-up"],
    "query": lambda root: ["query", "stabilisation", f"paths.warehouse={root}", "plot.format=none"],
    "gc": lambda root: ["gc", "--root", root, "--dry-run"],
}


@pytest.mark.parametrize("command", READS)
def test_the_data_folder_is_refused_naming_the_warehouse_inside_it(project, capsys, command):
    before = snapshot(project)
    err = refused(capsys, READS[command](str(project / "data")))
    assert f"{project / 'data'} is not a warehouse" in err
    assert f"the nearest warehouse is {project / 'data' / 'warehouse'}" in err
    assert snapshot(project) == before


@pytest.mark.parametrize("command", READS)
@pytest.mark.parametrize("kind", ["empty", "missing", "inside"])
def test_no_other_folder_is_served_and_reading_creates_nothing(project, capsys, command, kind):
    folder = {"empty": project / "empty", "missing": project / "nothing", "inside": project / "data" / "warehouse" / "spectra"}[kind]  # fmt: skip
    if kind == "empty":
        folder.mkdir()
    before = snapshot(project)
    err = refused(capsys, READS[command](str(folder)))
    assert str(folder) in err and ("not a warehouse" in err or "does not exist" in err)
    if kind == "inside":  # the warehouse it lies in is named
        assert f"the nearest warehouse is {project / 'data' / 'warehouse'}" in err
    assert snapshot(project) == before


def test_a_wrong_layerlake_data_creates_nothing_for_a_failed_command(project, tmp_path, monkeypatch, capsys):
    wrong = tmp_path / "typo"
    wrong.mkdir()
    monkeypatch.setenv("LAYERLAKE_DATA", str(wrong))
    before = snapshot(tmp_path)
    for argv in (["query", "stabilisation"], ["sql", "select 1"], ["check"], ["runs"]):
        err = refused(capsys, argv)
        assert str(wrong / "warehouse") in err and "$LAYERLAKE_DATA" in err, argv
    assert snapshot(tmp_path) == before  # no runs/ folder under the wrong data folder, nothing anywhere


def test_a_layerlake_data_that_is_a_file_is_named_a_file(project, tmp_path, monkeypatch, capsys):
    wrong = tmp_path / "a-file"
    wrong.write_text("not a folder")
    monkeypatch.setenv("LAYERLAKE_DATA", str(wrong))
    before = snapshot(tmp_path)
    for argv in (["query", "stabilisation"], ["sql", "select 1"], ["check"], ["suite", "show"]):
        err = refused(capsys, argv)
        assert f"{wrong} is a file" in err and "$LAYERLAKE_DATA names it" in err, argv
        assert "Traceback" not in err and "NotADirectoryError" not in err
    assert snapshot(tmp_path) == before


def test_the_fix_for_a_hydra_command_names_its_folder_option_once(project, capsys):
    err = refused(capsys, ["query", "stabilisation", f"paths.data={project / 'nothing'}"])
    assert "with paths.warehouse=DIR (or paths.data=DIR, whose warehouse is DIR/warehouse) (or set" in err


@pytest.mark.parametrize(
    "override", ["paths.runs=/proc/layerlake-x", "hydra.run.dir=/proc/layerlake-x", "paths.runs={file}/runs"]
)
def test_a_run_folder_that_cannot_be_made_is_named_before_the_job(project, capsys, override):
    (project / "f").write_text("a file")
    override = override.format(file=project / "f")
    before = snapshot(project)
    for argv in (["query", "stabilisation", override], ["suite", "show", override]):
        err = refused(capsys, argv)
        assert "cannot make the run folder" in err and "paths.runs=DIR" in err, argv
    assert snapshot(project) == before


def test_a_shared_dataset_given_as_the_warehouse_says_how_to_read_it(project, capsys):
    assert (
        main(["share", "export", str(project / "shared"), "--root", str(project / "data" / "warehouse")]) == 0
    )
    capsys.readouterr()
    err = refused(capsys, ["sql", "select 1", "--root", str(project / "shared")])
    assert "is a shared dataset" in err and "share attach" in err


def test_a_warehouse_opened_by_a_writer_but_empty_reads_as_empty(tmp_path, capsys):
    store = Warehouse(tmp_path / "new")  # what a writer makes before its first commit
    assert is_warehouse(store.root)
    assert (
        main(["sql", "select count(*) as n from spectra", "--root", str(store.root), "--format", "csv"]) == 0
    )
    assert capsys.readouterr().out.split() == ['"n"', "0"]


def test_reading_a_good_warehouse_creates_nothing_either(project, capsys):
    root = str(project / "data" / "warehouse")
    before = snapshot(project)
    for argv in (["sql", "select * from spectra", "--root", root], ["check", "--root", root], ["runs", "--root", root],
                 ["sql", "select 1"], ["check"], ["recipes"]):  # fmt: skip
        assert main(argv) in (0, 1), argv  # check may find problems in a synthetic warehouse: 1
    capsys.readouterr()
    assert snapshot(project) == before


def test_writers_still_make_a_new_warehouse_where_asked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    metrics = tmp_path / "m.csv"
    metrics.write_text(
        "model,step,layer,module,metric,value\npythia-70m-deduped,0,0,attention.dense,cka_scores,0.5\n"
    )
    monkeypatch.setenv("LAYERLAKE_DATA", str(tmp_path / "fresh"))
    assert main(["import-metrics", str(metrics), "--source", "paper", "--suite", "pythia"]) == 0
    assert is_warehouse(tmp_path / "fresh" / "warehouse")
    assert main(["sql", "select count(*) as n from imported_metrics", "--format", "csv"]) == 0
    assert capsys.readouterr().out.split()[-2:] == ['"n"', "1"]


def test_connect_on_a_fresh_project_says_how_to_make_a_warehouse(tmp_path, monkeypatch):
    monkeypatch.delenv("LAYERLAKE_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(WarehouseError) as error:
        layerlake.connect()
    assert str(tmp_path / "data" / "warehouse") in error.value.message
    assert "layerlake extract" in error.value.fix and "make demo" in error.value.fix
    assert not (tmp_path / "data").exists()


def test_the_nearest_warehouses_are_below_then_above(tmp_path):
    for name in ("a/data/warehouse", "b/warehouse"):
        Warehouse(tmp_path / name)
    assert nearest_warehouses(tmp_path) == [
        tmp_path / "b" / "warehouse",
        tmp_path / "a" / "data" / "warehouse",
    ]
    inside = tmp_path / "b" / "warehouse" / "spectra" / "s"
    inside.mkdir(parents=True)
    assert nearest_warehouses(inside) == [tmp_path / "b" / "warehouse"]


# --- where data goes --------------------------------------------------------------------------------------


def version(cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "layerlake.cli", "--version"], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_version_says_where_data_goes_and_why(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LAYERLAKE_DATA"}
    line = version(tmp_path, env)
    assert (
        line
        == f"layerlake {layerlake.__version__} (data: {tmp_path.resolve() / 'data'}, from the working directory)"
    )
    line = version(tmp_path, {**env, "LAYERLAKE_DATA": "elsewhere"})
    assert (
        line
        == f"layerlake {layerlake.__version__} (data: {tmp_path.resolve() / 'elsewhere'}, from $LAYERLAKE_DATA)"
    )


def test_the_data_folder_follows_the_working_directory_not_the_install(tmp_path, monkeypatch):
    """An editable install once wrote under the checkout wherever it ran; now the rule is the same for
    every install: Hydra's paths group and the query side agree on ./data under the working directory."""
    from layerlake.conf.compose import compose
    from layerlake.warehouse import default_root

    monkeypatch.delenv("LAYERLAKE_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    assert Path(compose().paths.data) == tmp_path.resolve() / "data"
    assert default_root() == tmp_path.resolve() / "data" / "warehouse"
