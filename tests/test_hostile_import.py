"""Hostile shared datasets cannot duplicate or poison the warehouse (issue 22.1-2).

Keys are the contract across the whole warehouse: an import whose rows repeat a key the warehouse holds
under another suite or model is refused, for every table; so is an import repeating a key inside itself;
``check``'s duplicate_keys audit sees a key repeated across partitions in every table. Imported content
is held to what the writer writes (names, enums, bounds, lengths, the task's own run, its meta); a
refused import leaves the warehouse byte for byte as it was. A malformed task on disk is named by
``check`` and breaks no reader (``runs``, ``sql``, ``track``)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from hostile_data import NOW, build, probe_row, set_column, tamper, tree_hash
from share_http import Server

import layerlake
from layerlake.cli.main import main
from layerlake.core.errors import LayerlakeError
from layerlake.warehouse import run_admin, schema
from layerlake.warehouse.audits import load_audits, run_audit
from layerlake.warehouse.errors import ShareError
from layerlake.warehouse.runs import Run, RunKind, begin_run
from layerlake.warehouse.share import export_dataset, import_dataset, verify_folder
from layerlake.warehouse.writer import Warehouse

TABLES = tuple(schema.TABLES)


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> Path:
    """The receiving warehouse: run r1 of toy/m1, every table filled."""
    root = tmp_path_factory.mktemp("local") / "warehouse"
    build(root, "m1", "r1")
    return root


@pytest.fixture(scope="module")
def other_model(tmp_path_factory) -> Path:
    """The same run id r1 with the same keys, but under model m2: a hostile duplicate."""
    root = tmp_path_factory.mktemp("other") / "warehouse"
    build(root, "m2", "r1")
    return root


@pytest.fixture(scope="module")
def export(local, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("export") / "full"
    export_dataset(local, dest)
    return dest


def refused(folder: Path, root: Path, match: str) -> None:
    """Importing ``folder`` into ``root`` is refused with ``match`` and changes no byte of ``root``."""
    before = tree_hash(root) if root.exists() else None
    with pytest.raises(ShareError, match=match):
        import_dataset(folder, root)
    assert (tree_hash(root) if root.exists() else None) == before


@pytest.mark.parametrize("table", TABLES)
def test_a_key_held_under_another_model_is_refused_for_every_table(table, local, other_model, tmp_path):
    dest = tmp_path / "one"
    export_dataset(other_model, dest, tables=[table])
    refused(dest, local, "conflicts with the warehouse")


@pytest.mark.parametrize("table", TABLES)
def test_a_key_repeated_inside_one_imported_file_is_refused(table, export, tmp_path):
    folder = tmp_path / "dup"
    shutil.copytree(export, folder)
    tamper(folder, table, rows=lambda t: pa.concat_tables([t, t]))
    refused(folder, tmp_path / "empty", "held twice|2 runs rows in one")


def test_a_real_export_with_tags_and_notes_imports_and_its_run_is_managed(export, tmp_path):
    root = tmp_path / "fresh"
    report = import_dataset(export, root)
    assert "annotations.r1" in report.imported and main(["check", "--root", str(root)]) == 0
    con = layerlake.connect(root)
    try:
        assert con.sql("select key, value from run_tags order by key").fetchall() == [
            ("group", "a"), ("verdict", "good run")
        ]  # fmt: skip
        assert con.sql("select note from run_notes").fetchall() == [("loss fell as expected",)]
    finally:
        con.close()
    store = Warehouse(root)
    assert run_admin.tag(store, "r1", {"group": "b"}) == {"group": "b", "verdict": "good run"}
    assert run_admin.note(store, "r1", "imported, then looked at again") == 2
    with pytest.raises(LayerlakeError, match="note written at"):  # a note's time is its key
        run_admin.note(store, "r1", "same time", at=NOW)


def test_an_archived_run_exports_and_imports_archived(local, tmp_path):
    root = tmp_path / "archived"
    shutil.copytree(local, root)
    run_admin.archive(Warehouse(root), ["r1"])
    export_dataset(root, tmp_path / "export")
    verify_folder(tmp_path / "export")
    import_dataset(tmp_path / "export", tmp_path / "fresh")
    assert [e.run_id for e in run_admin.archived_runs(Warehouse(tmp_path / "fresh"))] == ["r1"]
    assert main(["check", "--root", str(tmp_path / "fresh")]) == 0


def visible_rows(root: Path | None, attach: list) -> dict[str, int]:
    con = layerlake.connect(root, attach=attach) if root else layerlake.connect(attach=attach)
    try:
        return {t: con.sql(f"select count(*) from {t}").fetchall()[0][0] for t in TABLES}
    finally:
        con.close()


def test_an_archived_run_stays_hidden_however_a_copy_of_it_is_attached(local, tmp_path):
    # a copy made before the archive must not bring the run back, and a dataset whose run is archived
    # shows it attached as it shows it imported: by folder, by URL and as an attached warehouse
    before_archive = tmp_path / "before"
    export_dataset(local, before_archive)
    archived = tmp_path / "archived"
    shutil.copytree(local, archived)
    run_admin.archive(Warehouse(archived), ["r1"])
    archived_export = tmp_path / "archived-export"
    export_dataset(archived, archived_export)
    import_dataset(archived_export, tmp_path / "imported")
    nothing = dict.fromkeys(TABLES, 0)
    assert visible_rows(tmp_path / "imported", []) == nothing
    assert visible_rows(archived, []) == nothing
    assert visible_rows(archived, [before_archive]) == nothing  # the local archive rules its copies
    assert visible_rows(None, [archived_export]) == nothing
    assert visible_rows(None, [archived]) == nothing
    with Server(archived_export) as server:
        assert visible_rows(None, [server.url]) == nothing
    shown = visible_rows(None, [before_archive])  # the copy alone still shows what it holds
    assert shown["runs"] == 1 and all(shown.values())
    run_admin.archive(Warehouse(archived), ["r1"], restore=True)
    assert visible_rows(archived, [archived_export]) == shown  # the first copy decides, both ways


def test_the_same_dataset_imports_again_as_present(local, export):
    before = tree_hash(local)
    report = import_dataset(export, local)
    assert report.imported == [] and tree_hash(local) == before


def test_check_finds_a_key_repeated_across_partitions_in_every_table(local, other_model, tmp_path):
    root = tmp_path / "both"
    shutil.copytree(local, root)
    merged = Warehouse(root)
    for entry in Warehouse(other_model).committed().values():  # m2's tasks under other task ids
        tables = {f.table: pa.parquet.read_table(other_model / f.path) for f in entry.files}
        merged.commit("x" + entry.task_id, entry.suite, entry.model, tables, entry.meta, run_id=entry.run_id)
    audit = next(a for a in load_audits() if a.name == "duplicate_keys")
    con = layerlake.connect(root)
    try:
        found = run_audit(con, audit)
    finally:
        con.close()
    assert set(found.column("table_name").to_pylist()) == set(TABLES)
    assert main(["check", "--root", str(root)]) == 1


def _first(column: str, value):
    return lambda t: set_column(t, column, [value] * t.num_rows)


HOSTILE = {
    "run_id of another task": ("scalars", _first("run_id", "r9"), None, "run_id r9 in a task"),
    "model of another task": ("spectra", _first("model", "m9"), None, "model m9 in a task"),
    "a name breaking the rule": ("activation_stats", _first("probe_id", "../p0"), None, "name rule"),
    "run status not an enum": ("runs", _first("status", "exploded"), None, "not one of"),
    "run kind not an enum": ("runs", _first("kind", "weird"), None, "not one of"),
    "kernel not an enum": ("sketches", _first("kernel", "poly"), None, "not one of"),
    "site not an enum": ("activations", _first("site", "anything"), None, "not one of"),
    "step out of range": ("scalars", _first("step", 2**62), None, "step outside"),
    "negative layer": ("spectra", _first("layer", -1), None, "layer outside"),
    "huge size": ("matrix_stats", _first("rows", 2**30), None, "rows outside"),
    "activation shape not its bytes": ("activations", _first("n", 3), None, "n x d float16"),
    "gram shorter than n": ("sketches", _first("n", 3), None, "n\\(n\\+1\\)/2"),
    "more singular values than min(rows, cols)": ("spectra", _first("sv", [3.0, 2.0, 1.0]), None, "sv value"),
    "rows of another step than the task": ("sketches", _first("step", 7), None, "of step 7 in a task of step"),
    "scalars outside their block": ("scalars", _first("step", 5000), None, "block"),
    "run meta without the run": ("runs", None, lambda e: e["meta"].pop("run"), "not a run's"),
    "run meta of another status": (
        "runs", None, lambda e: e["meta"]["run"].update(status="running"), "differs from its meta",
    ),
    "run task id not run.<id>": ("runs", None, lambda e: e.update(task_id="run.zzz"), "run.<run_id>"),
    "meta step beyond int64": ("sketches", None, lambda e: e["meta"].update(step=2**63), "impossible step"),
    "meta kind run on a non-run": ("spectra", None, lambda e: e["meta"].update(kind="run"), "not a run's"),
    "tag key not a tag name": ("run_tags", _first("key", "../etc"), None, "not a tag name"),
    "tag value too long": ("run_tags", _first("value", "x" * 10_001), None, "tag value over"),
    "blank note": ("run_notes", _first("note", "   "), None, "note that is blank"),
    "note of another run": ("run_notes", _first("run_id", "r9"), None, "run_id r9 in a task"),
    "annotations task id not annotations.<id>": (
        "run_tags", None, lambda e: e.update(task_id="annotations.zzz"), "annotations.<run_id>",
    ),
    "tags in a task of another kind": (
        "run_tags", None, lambda e: e["meta"].update(kind="scalars", block=0), "not 'annotations'",
    ),
    "notes counted otherwise than held": ("run_notes", None, lambda e: e["meta"].update(notes=5), "counts 5"),
    "archived mark not true": ("spectra", None, lambda e: e["meta"].update(archived="no"), "archived mark"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(HOSTILE))
def test_content_no_writer_writes_is_refused_and_changes_nothing(case, export, local, tmp_path):
    table, rows, meta, match = HOSTILE[case]
    folder = tmp_path / "hostile"
    shutil.copytree(export, folder)
    tamper(folder, table, rows=rows, meta=meta)
    with pytest.raises(ShareError, match=match):
        verify_folder(folder)
    refused(folder, tmp_path / "empty", match)
    refused(folder, local, match)


def _first_file(change):
    def edit(manifest: dict) -> None:
        change(manifest["files"][0])

    return edit


MANIFEST_LISTS = {
    "rows not a number in files": (_first_file(lambda f: f.update(rows="many")), "rows 'many' not"),
    "rows not the task's in files": (_first_file(lambda f: f.update(rows=999)), "rows '999' not"),
    "negative bytes in files": (_first_file(lambda f: f.update(bytes=-1)), "bytes '-1' not"),
    "a file listed twice in files": (lambda m: m["files"].append(dict(m["files"][0])), "listed twice under 'files'"),
    "a dataset id that is not its files' hash": (
        lambda m: m.update(dataset_id="../../x"), "dataset_id '../../x' is not its files' hash",
    ),
    "a 50 MB string in a task's meta": (
        lambda m: m["tasks"][0]["meta"].update(note="x" * (50 << 20)), "its meta is 52,42",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(MANIFEST_LISTS))
def test_a_manifest_whose_lists_disagree_or_overflow_is_refused_and_changes_nothing(
    case, export, local, tmp_path
):
    # only tasks[].files was checked: the flat files list, the dataset id and a meta's size were taken as given
    edit, match = MANIFEST_LISTS[case]
    folder = tmp_path / "hostile"
    shutil.copytree(export, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    refused(folder, tmp_path / "empty", match)
    refused(folder, local, match)
    before = tree_hash(local)
    assert main(["share", "attach", str(folder), "--root", str(local), "--sql", "select 1"]) == 2
    assert tree_hash(local) == before


@pytest.fixture(scope="module")
def malformed(local, tmp_path_factory) -> Path:
    """A warehouse holding a run task whose meta is not a run's (written by hand, as a crafted task
    would be): the case that made `check`, `runs` and `track` fail with KeyError for everyone."""
    root = tmp_path_factory.mktemp("malformed") / "warehouse"
    shutil.copytree(local, root)
    store = Warehouse(root)
    row = Run("evil", "toy", "m1", RunKind.train).table()
    store.commit("run.evil", "toy", "m1", {"runs": row}, {"kind": "run"}, run_id="evil")
    return root


def test_check_names_a_malformed_task_on_disk(malformed, capsys):
    assert main(["check", "--root", str(malformed)]) == 1
    out = capsys.readouterr().out
    assert "malformed_tasks" in out and "run.evil" in out and "Traceback" not in out


def test_runs_sql_and_a_new_run_work_beside_a_malformed_task(malformed, capsys):
    assert main(["runs", "--root", str(malformed)]) == 0
    assert main(["sql", "select count(*) from runs", "--root", str(malformed)]) == 0
    assert "Traceback" not in capsys.readouterr().err
    store = Warehouse(malformed)
    begin_run(store, Run("fresh", "toy", "m1", RunKind.train), probe_row(), resume=False)
    assert "run.fresh" in store.committed()
    if importlib.util.find_spec("torch") is not None:  # track() itself scans every run task as it starts
        with layerlake.track(
            suite="toy", model_name="m1", run_id="tracked", warehouse=malformed, quiet=True
        ) as run:
            run.log(0, loss=1.0)
    con = layerlake.connect(malformed)
    try:
        assert con.sql("select count(*) from runs where run_id in ('evil', 'fresh', 'r1')").fetchall() == [
            (3,)
        ]
    finally:
        con.close()


def test_a_malformed_run_is_refused_by_name_when_resumed(malformed):
    store = Warehouse(malformed)
    with pytest.raises(LayerlakeError, match="run.evil|malformed"):
        begin_run(store, Run("evil", "toy", "m1", RunKind.train), resume=True)


def test_export_meta_written_by_the_writer_is_valid(export):
    manifest = json.loads((export / "manifest.json").read_text())
    kinds = {t["meta"].get("kind") for t in manifest["tasks"]}
    assert kinds == {"run", "probe", "extract", "scalars", "annotations"}
    verify_folder(export)


def test_a_run_meta_is_checked_against_the_fields_of_a_run():
    """``warehouse.content`` knows a run's fields from the runs table's columns (it may not import
    ``warehouse.runs``, which imports it): they are ``Run``'s fields, and a meta with another is refused."""
    import dataclasses

    from layerlake.warehouse.content import meta_problems
    from layerlake.warehouse.manifest import CommitEntry

    assert {f.name for f in dataclasses.fields(Run)} == set(schema.TABLES["runs"].file_schema().names)

    def entry(meta: dict) -> CommitEntry:
        return CommitEntry("ok", "run.r", "toy", "m1", (), meta, schema.SCHEMA_VERSION, "", run_id="r")

    meta = Run("r", "toy", "m1", RunKind.train).meta()
    assert meta_problems(entry(meta)) == []
    meta["run"]["colour"] = "red"
    assert any("unknown fields ['colour']" in p for p in meta_problems(entry(meta)))
