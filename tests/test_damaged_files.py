"""A stored file damaged after its commit: the views leave its task out and every reading command says
so (the answer may lack rows the user expects); a file whose bytes changed at the same size fails the
query with a fix that points at `layerlake check --verify-files`."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from layerlake.cli.main import main
from layerlake.queries.errors import RecipeError
from layerlake.queries.loader import run_recipe
from layerlake.warehouse.synthetic import checkpoint_tables
from layerlake.warehouse.views import connect
from layerlake.warehouse.writer import Warehouse


@pytest.fixture
def root(tmp_path) -> Path:
    w = Warehouse(tmp_path / "wh")
    for step in (0, 1, 2):
        t = checkpoint_tables("m", step, {(0, "mlp_out"): np.eye(3)}, {(0, "dense"): [4.0, 1.0]}, d=4)
        w.commit(f"t{step}", "s", "m", t, {})
    return w.root


def spectra_file(root: Path, task: str) -> Path:
    (path,) = [p for p in (root / "spectra").rglob("*.parquet") if p.name.startswith(task)]
    return path


def test_a_truncated_file_leaves_its_task_out_and_sql_says_so(root, capfd):
    path = spectra_file(root, "t1")
    path.write_bytes(path.read_bytes()[:100])
    assert main(["sql", "select count(*) as n from spectra", "--root", str(root), "--format", "csv"]) == 0
    printed = capfd.readouterr()
    assert printed.out.split() == ['"n"', "2"]  # the damaged task's row is not shown
    assert "note: 1 stored task(s) are left out of every view" in printed.err and "(first: t1)" in printed.err
    con = connect(root)
    (error,) = con.sql("select error from failures where task_id = 't1'").fetchall()[0]
    con.close()
    assert error.startswith("not shown: 1 of its files do not match the manifest") and "100 bytes" in error


def test_a_whole_warehouse_gives_no_note(root, capfd):
    assert main(["sql", "select count(*) as n from spectra", "--root", str(root), "--format", "csv"]) == 0
    assert "note:" not in capfd.readouterr().err


def test_a_file_changed_at_the_same_size_fails_the_query_pointing_at_verify_files(root, capfd):
    path = spectra_file(root, "t1")
    data = bytearray(path.read_bytes())
    data[-40:-36] = b"\xff\xff\xff\xff"  # inside the footer: the size still matches the manifest
    path.write_bytes(bytes(data))
    assert main(["sql", "select count(*) from spectra", "--root", str(root)]) == 2
    assert "layerlake check --verify-files" in capfd.readouterr().err
    con = connect(root)
    try:
        with pytest.raises(RecipeError) as failure:
            run_recipe(con, "rank_trajectories", {"suite": "s"})
    finally:
        con.close()
    assert "--verify-files" in failure.value.fix


def test_a_task_left_out_here_but_shown_from_an_attached_copy_gives_no_note(root, tmp_path, capfd):
    assert main(["share", "export", str(tmp_path / "shared"), "--root", str(root)]) == 0
    path = spectra_file(root, "t1")
    path.write_bytes(path.read_bytes()[:100])
    capfd.readouterr()
    argv = [
        "share",
        "attach",
        str(tmp_path / "shared"),
        "--root",
        str(root),
        "--sql",
        "select count(*) from spectra",
    ]
    assert main(argv) == 0
    printed = capfd.readouterr()
    assert re.search(r"│\s+3\s+│", printed.out) and "note:" not in printed.err  # the copy fills the gap
