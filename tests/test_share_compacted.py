"""Sharing a compacted warehouse: a merged file (several tasks' slices) is exported once and imports
back to the same rows; an export or import of only some of a merged file's tasks writes their slices
into a file of their own, so no file ever holds rows of a task that does not list it."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from test_compact import content, many_small_tasks

import layerlake
from layerlake.cli.main import main
from layerlake.warehouse.compact import compact
from layerlake.warehouse.share import export_dataset, import_dataset
from layerlake.warehouse.share.verify import verify_folder
from layerlake.warehouse.writer import Warehouse


@pytest.fixture(scope="module")
def compacted(tmp_path_factory) -> Path:
    """12 tasks over two models, compacted: every table's rows of a model in one merged file."""
    root = tmp_path_factory.mktemp("compacted") / "wh"
    many_small_tasks(root, n=12)
    compact(root)
    assert all(f.shared for e in Warehouse(root).committed().values() for f in e.files)
    return root


def each_row_once(folder: Path, listings: list) -> None:
    """Every file holds exactly the rows its listings give it (the slices of a merged file tile it)."""
    per_file: dict[str, list] = {}
    for f in listings:
        per_file.setdefault(f.path, []).append(f)
    for path, listed in per_file.items():
        assert pq.ParquetFile(folder / path).metadata.num_rows == sum(f.rows for f in listed), path
        if len(listed) > 1:
            starts = sorted((f.first_row, f.rows) for f in listed)
            assert [s for s, _ in starts] == [sum(r for _, r in starts[:i]) for i in range(len(starts))]


def rows(root: Path, table: str, where: str = "true") -> list[tuple]:
    con = layerlake.connect(root)
    try:
        return sorted(map(repr, con.sql(f"select * from {table} where {where}").fetchall()))
    finally:
        con.close()


def test_a_compacted_export_writes_each_merged_file_once_and_imports_back(compacted, tmp_path):
    folder = tmp_path / "shared"
    report = export_dataset(compacted, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.parquet"))
    merged = {f.path for e in Warehouse(compacted).committed().values() for f in e.files}
    assert on_disk == sorted(merged) and report.files == len(merged)  # each merged file once, byte for byte
    assert manifest["format_version"] == 2 and manifest["tables"]["sketches"]["files"] == 2
    dataset = verify_folder(folder)
    each_row_once(folder, [f for e in dataset.entries for f in e.files])
    for table in (
        "checkpoints",
        "sketches",
        "spectra",
    ):  # a plain reader globbing the folder sees each row once
        plain = duckdb.sql(f"select count(*) from read_parquet('{folder}/{table}/**/*.parquet')").fetchall()[
            0
        ][0]
        assert plain == manifest["tables"][table]["rows"]

    empty = tmp_path / "empty"
    import_dataset(folder, empty)
    assert content(empty) == content(compacted)
    each_row_once(empty, [f for e in Warehouse(empty).committed().values() for f in e.files])
    assert main(["check", "--root", str(empty), "--verify-files"]) == 0

    before = (compacted / "_manifest" / "commits.jsonl").read_bytes()
    again = import_dataset(folder, compacted)
    assert again.imported == [] and len(again.present) == 12
    assert (compacted / "_manifest" / "commits.jsonl").read_bytes() == before


def test_an_export_of_some_tasks_of_merged_files_holds_only_their_rows(compacted, tmp_path):
    folder = tmp_path / "some"
    export_dataset(compacted, folder, steps=[0, 1, 2, 3, 4])  # 5 of the 12 tasks share files with others
    dataset = verify_folder(folder)
    assert sorted(e.meta["step"] for e in dataset.entries) == [0, 1, 2, 3, 4]
    each_row_once(folder, [f for e in dataset.entries for f in e.files])
    plain = duckdb.sql(
        f"select distinct step from read_parquet('{folder}/checkpoints/**/*.parquet')"
    ).fetchall()
    assert sorted(s for (s,) in plain) == [0, 1, 2, 3, 4]  # no other task's rows came along

    target = tmp_path / "target"
    import_dataset(folder, target)
    for table in ("checkpoints", "sketches", "spectra"):
        assert rows(target, table) == rows(compacted, table, "step < 5")
    assert main(["check", "--root", str(target), "--verify-files"]) == 0
    every = content(compacted)

    # then the whole export: the merged files' other slices are new, the first five present
    whole = tmp_path / "whole"
    export_dataset(compacted, whole)
    report = import_dataset(whole, target)
    assert len(report.imported) == 7 and len(report.present) == 5
    assert content(target) == every
    each_row_once(target, [f for e in Warehouse(target).committed().values() for f in e.files])
    assert main(["check", "--root", str(target), "--verify-files"]) == 0


def test_an_export_without_merged_files_stays_readable_by_format_1_readers(tmp_path):
    root = tmp_path / "wh"
    many_small_tasks(root, n=4)
    export_dataset(root, tmp_path / "plain")
    manifest = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert all("first_row" not in f for f in manifest["files"])


def test_slices_that_overlap_or_leave_rows_out_are_refused(compacted, tmp_path, capsys):
    import shutil

    folder = tmp_path / "shared"
    export_dataset(compacted, folder)
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    task = next(t for t in manifest["tasks"] if any(f.get("first_row") for f in t["files"]))
    f = next(f for f in task["files"] if f.get("first_row"))
    f["first_row"] -= 1  # overlaps the slice before it
    (broken / "manifest.json").write_text(json.dumps(manifest))
    local = tmp_path / "local"
    assert main(["share", "import", str(broken), "--root", str(local)]) == 2
    err = capsys.readouterr().err
    assert "rows start at" in err and "Traceback" not in err
    assert not local.exists()
