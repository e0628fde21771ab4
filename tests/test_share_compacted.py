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


@pytest.mark.parametrize(
    "part",
    [{"tables": ["sketches", "runs", "scalars"]}, {"steps": [0, 1, 2]}],
    ids=["more-tables-of-its-tasks", "more-tasks"],
)
def test_an_import_into_an_archived_run_is_refused_whole(tmp_path, part):
    """A run archived here gets no rows from an import, the rule of every writer: an export with more of
    its tables gave its archived tasks the files of a merged file, copied whole with a shown run's rows
    (a view reads a file whole: all of them showed); one with more of its steps showed those. Refused whole,
    naming the run and both fixes; the first (restore, import, archive) leaves it hidden exactly."""
    from test_runs_command import make_warehouse, run_rows

    from layerlake.warehouse.errors import ShareError

    src = make_warehouse(tmp_path / "src", steps=6)  # runs r1 and r2 of model m, c of model n
    compact(src, small_bytes=1 << 30, target_bytes=1 << 30)
    shared = {f.path for e in Warehouse(src).committed().values() if e.run_id == "r2" for f in e.files}
    assert any(
        f.path in shared for e in Warehouse(src).committed().values() if e.run_id == "r1" for f in e.files
    )
    export_dataset(src, tmp_path / "part", **part)
    export_dataset(src, tmp_path / "full")
    dst = tmp_path / "dst"
    import_dataset(tmp_path / "part", dst)
    assert main(["runs", "archive", "r1", "--root", str(dst)]) == 0
    lines, shown = (dst / "_manifest" / "commits.jsonl").read_bytes(), run_rows(dst)
    with pytest.raises(
        ShareError, match=r"holds new rows of run\(s\) r1, archived in the warehouse"
    ) as refused:
        import_dataset(tmp_path / "full", dst)
    assert (
        f"layerlake runs restore r1 --root {dst}" in refused.value.fix
        and "without its rows" in refused.value.fix
    )
    assert (dst / "_manifest" / "commits.jsonl").read_bytes() == lines and run_rows(dst) == shown
    assert main(["runs", "restore", "r1", "--root", str(dst)]) == 0
    import_dataset(tmp_path / "full", dst)
    assert main(["runs", "archive", "r1", "--root", str(dst)]) == 0
    assert run_rows(dst) == {run: n for run, n in run_rows(src).items() if run != "r1"}
    assert main(["check", "--root", str(dst), "--verify-files"]) == 0


def test_an_import_hiding_part_of_a_run_shown_here_is_refused(tmp_path):
    """A run archived in the dataset and shown here: its new tasks would come hidden beside its shown ones."""
    from test_runs_command import make_warehouse, run_rows

    from layerlake.warehouse.errors import ShareError

    src = make_warehouse(tmp_path / "src", steps=4)
    export_dataset(src, tmp_path / "part", steps=[0, 1])
    assert main(["runs", "archive", "r1", "--root", str(src)]) == 0
    export_dataset(src, tmp_path / "later")
    dst = tmp_path / "dst"
    import_dataset(tmp_path / "part", dst)
    lines, shown = (dst / "_manifest" / "commits.jsonl").read_bytes(), run_rows(dst)
    with pytest.raises(ShareError, match=r"holds run\(s\) r1 archived, which the warehouse at .* shows"):
        import_dataset(tmp_path / "later", dst)
    assert (dst / "_manifest" / "commits.jsonl").read_bytes() == lines and run_rows(dst) == shown
