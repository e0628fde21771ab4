"""A collaborator's folder with one fault is refused, named, and leaves the local warehouse untouched.

Each fault is made on a fresh copy of a good export. Where a fault would also break the sha256 (a
truncated file, a renamed column) the manifest is patched to match, so only the check under test can
catch it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_share import build_warehouse, tree_hash  # tests/ is on sys.path under pytest

from layerlake.cli.main import main
from layerlake.core.hashing import sha256_file
from layerlake.warehouse.errors import ShareError
from layerlake.warehouse.share import attach, export_dataset, import_dataset

SHARD = ""  # the sketches file of task t-m1-10, found in the exported folder (its name holds its hash)
EXTRA = "sketches/toy/m1/extra-0000000000000000.parquet"


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("faults")
    build_warehouse(base / "source", models=("m1",), steps=(0, 10))
    export_dataset(base / "source", base / "good")
    global SHARD
    (path,) = (base / "good" / "sketches" / "toy" / "m1").glob("t-m1-10-*.parquet")
    SHARD = path.relative_to(base / "good").as_posix()
    return base / "good"


def _relist(folder: Path, rel: str) -> None:
    """Make manifest.json agree with the file's current bytes (size and sha256)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for f in manifest["files"] + [f for t in manifest["tasks"] for f in t["files"]]:
        if f["path"] == rel:
            f["sha256"], f["bytes"] = sha256_file(folder / rel), (folder / rel).stat().st_size
    (folder / "manifest.json").write_text(json.dumps(manifest))


def flip_byte(folder: Path) -> None:
    data = bytearray((folder / SHARD).read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / SHARD).write_bytes(bytes(data))


def missing_file(folder: Path) -> None:
    (folder / SHARD).unlink()


def extra_file(folder: Path) -> None:
    shutil.copy(folder / SHARD, folder / EXTRA)


def truncated(folder: Path) -> None:
    data = (folder / SHARD).read_bytes()
    (folder / SHARD).write_bytes(data[: len(data) - 200])
    _relist(folder, SHARD)


def lying_rows(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    for f in manifest["files"] + [f for t in manifest["tasks"] for f in t["files"]]:
        if f["path"] == SHARD:
            f["rows"] += 1
    (folder / "manifest.json").write_text(json.dumps(manifest))


def renamed_column(folder: Path) -> None:
    table = pq.read_table(folder / SHARD)
    table = table.rename_columns(["gram_values" if c == "gram" else c for c in table.column_names])
    pq.write_table(table, folder / SHARD)
    _relist(folder, SHARD)


FAULTS = {
    flip_byte: ("sha256 differs", "copy the folder again"),
    missing_file: ("missing", "copy the whole folder again"),
    extra_file: (
        "extra-0000000000000000.parquet: is not listed",
        f"delete {EXTRA}",
    ),
    truncated: ("not a readable Parquet file", "copy the folder again"),
    lying_rows: ("holds 4 rows, manifest.json says 5", "export it again"),
    renamed_column: ("missing ['gram'], unknown ['gram_values']", "export it again"),
}


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.__name__)
def test_fault_is_refused_named_and_changes_nothing(fault, good, tmp_path, capsys):
    folder = tmp_path / "shared"
    shutil.copytree(good, folder)
    fault(folder)
    local = tmp_path / "wh"
    build_warehouse(local, models=("m2",), steps=(5,))
    before = tree_hash(local)
    what, fix = FAULTS[fault]
    with pytest.raises(ShareError) as error:
        import_dataset(folder, local)
    assert what in error.value.message and fix in error.value.fix
    assert (SHARD if fault is not extra_file else EXTRA) in error.value.message
    assert main(["share", "import", str(folder), "--root", str(local)]) == 2
    err = capsys.readouterr().err
    assert what in err and "fix:" in err
    if fault is not flip_byte:  # attach skips hashing unless --verify; every other fault is seen
        with pytest.raises(ShareError, match="does not verify"):
            attach(folder, local)
    assert main(["share", "attach", str(folder), "--root", str(local), "--verify"]) == 2
    assert tree_hash(local) == before


def test_manifest_listing_a_path_outside_the_folder_is_refused(good, tmp_path):
    folder = tmp_path / "shared"
    shutil.copytree(good, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    for f in manifest["files"] + [f for t in manifest["tasks"] for f in t["files"]]:
        if f["path"] == SHARD:
            f["path"] = "../../etc/passwd"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShareError, match="is not a shard path"):
        import_dataset(folder, tmp_path / "wh")
    assert not (tmp_path / "wh").exists()


def test_not_a_shared_folder(tmp_path):
    with pytest.raises(ShareError, match="manifest.json is missing"):
        import_dataset(tmp_path, tmp_path / "wh")
    with pytest.raises(ShareError, match="does not exist"):
        import_dataset(tmp_path / "nope", tmp_path / "wh")


def _files_of(manifest: dict, path: str) -> list[dict]:
    """Every listing of ``path``: in the flat ``files`` list and in its task's ``files``."""
    tasks = [f for t in manifest["tasks"] for f in t["files"]]
    return [f for f in manifest["files"] + tasks if f["path"] == path]


def _set(key: str, value):
    def change(manifest: dict) -> None:
        for f in _files_of(manifest, SHARD):
            f[key] = value(f) if callable(value) else value

    return change


# A manifest whose lists agree with each other and whose dataset_id is recomputed (a careful liar), with
# one field of another type or range than a writer writes: (the change, what the error says of it).
LIES = {
    "format_version_text": (lambda m: m.update(format_version="two"), 'format_version "two" (text), not a whole'),
    "format_version_list": (lambda m: m.update(format_version=[2]), "format_version [2] (a list), not a whole"),
    "sha256_number": (_set("sha256", 12345), "sha256 12345 (int) is not text"),
    "path_number": (_set("path", 7), "path 7 (int) is not text"),
    "bytes_text": (_set("bytes", lambda f: str(f["bytes"])), "(text) is not a whole number >= 0"),
    "bytes_float": (_set("bytes", lambda f: float(f["bytes"])), ".0 (a float) is not a whole number >= 0"),
    "bytes_negative": (_set("bytes", -5), "bytes -5 (int) is not a whole number >= 0"),
    "rows_bool": (_set("rows", True), "rows true (true or false) is not a whole number"),
    "first_row_text": (_set("first_row", "0"), 'first_row "0" (text) is not a whole number'),
    "tasks_null": (lambda m: m.update(tasks=None), "'tasks' is null, not a list"),
    "task_files_object": (lambda m: m["tasks"][0].update(files={"a": 1}), 'files {"a": 1} (an object) is not a list'),
    "meta_list": (lambda m: m["tasks"][0].update(meta=[[1, 2]]), "meta [[1, 2]] (a list) is not a JSON object"),
    "task_text": (lambda m: m["tasks"].append("hello"), 'an entry is "hello" (text), not a JSON object'),
}  # fmt: skip


def tell_lie(folder: Path, lie: str) -> None:
    """Change ``folder/manifest.json`` as ``LIES[lie]`` says, both lists alike, its dataset_id recomputed."""
    from layerlake.warehouse.share.layout import dataset_id

    manifest = json.loads((folder / "manifest.json").read_text())
    LIES[lie][0](manifest)
    with contextlib.suppress(TypeError):  # a path that is a number sorts with no text: no id to compute
        manifest["dataset_id"] = dataset_id((f["path"], f["sha256"]) for f in manifest["files"])
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("lie", LIES)
def test_a_manifest_field_of_another_type_is_refused_naming_it_alone(lie, good, tmp_path, capsys):
    """Every field of a shared manifest is held to the type and range a writer writes (a float size was
    imported, stored in the warehouse's own manifest, and carried into its next export); a manifest
    whose lists cannot be read is named alone: no file is then said to be unlisted or to be deleted."""
    folder = tmp_path / "shared"
    shutil.copytree(good, folder)
    tell_lie(folder, lie)
    local = tmp_path / "wh"
    build_warehouse(local, models=("m2",), steps=(5,))
    before = tree_hash(local)
    with pytest.raises(ShareError) as error:
        import_dataset(folder, local)
    assert LIES[lie][1] in error.value.message and "manifest.json" in error.value.message
    assert "export it again" in error.value.fix
    for command in (["share", "import", str(folder)], ["share", "attach", str(folder)],
                    ["share", "attach", str(folder), "--sql", "select count(*) from sketches"]):  # fmt: skip
        assert main([*command, "--root", str(local)]) == 2
        err = capsys.readouterr().err
        assert LIES[lie][1] in err and "fix:" in err and "Traceback" not in err
        assert (
            "is not listed" not in err and "delete" not in err
        )  # the manifest is the problem, not the files
    assert main(["share", "import", str(folder), "--root", str(tmp_path / "new")]) == 2
    assert tree_hash(local) == before and not (tmp_path / "new").exists()
