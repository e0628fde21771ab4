"""A shared dataset listing a table this layerlake does not know (issue 22.8): `share import` and
`share attach` name it and exit 2, never a traceback, and the warehouse is untouched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hostile_data import build, tree_hash

from layerlake.cli.main import main
from layerlake.warehouse.share import export_dataset


@pytest.fixture(scope="module")
def unknown(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("unknown")
    build(base / "warehouse")
    export_dataset(base / "warehouse", base / "export")
    folder = base / "export"
    manifest = json.loads((folder / "manifest.json").read_text())
    listed = next(f for t in manifest["tasks"] for f in t["files"] if f["table"] == "spectra")
    old, new = listed["path"], listed["path"].replace("spectra/", "gradnorms/", 1)
    (folder / new).parent.mkdir(parents=True)
    shutil.move(folder / old, folder / new)
    for f in [*manifest["files"], *(f for t in manifest["tasks"] for f in t["files"])]:
        if f["path"] == old:
            f.update(path=new, table="gradnorms")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder, base / "warehouse"


@pytest.mark.parametrize("command", ["import", "attach"])
def test_an_unknown_table_is_named_without_a_traceback(unknown, command, capsys):
    folder, root = unknown
    before = tree_hash(root)
    argv = ["share", command, str(folder), "--root", str(root)] + (
        ["--sql", "select 1"] if command == "attach" else []
    )
    assert main(argv) == 2
    out = capsys.readouterr()
    assert "gradnorms" in out.err and "unknown to this layerlake" in out.err and "Traceback" not in out.err
    assert tree_hash(root) == before
