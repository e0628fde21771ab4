"""A collaborator's folder with one fault is refused, named, and leaves the local warehouse untouched.

Each fault is made on a fresh copy of a good export. Where a fault would also break the sha256 (a
truncated file, a renamed column) the manifest is patched to match, so only the check under test can
catch it.
"""

from __future__ import annotations

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
