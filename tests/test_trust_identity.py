"""Trust, part 1: keys are content (a moved data folder or an imported dataset is never extracted twice),
old warehouses migrate once, imports repair what they can, paths stay inside their root, and a
checkpoint whose config and weights disagree fails its own task.

Each test runs the real pipeline on the tiny suite (tests/conftest.py) into folders of its own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import TINY_OVERRIDES

from layerlake import warehouse
from layerlake.cli.main import main
from layerlake.etl.driver import run_extract
from layerlake.warehouse import schema
from layerlake.warehouse.errors import ManifestError, ShareError, WarehouseError
from layerlake.warehouse.gram import values_column
from layerlake.warehouse.manifest import read_entries
from layerlake.warehouse.share import export_dataset, import_dataset
from layerlake.warehouse.writer import Warehouse

STEPS = [0, 8, 32]


def under(settings, data: Path, suites: Path | None = None):
    """``settings`` with every path under ``data`` (the suites too, unless given)."""
    paths = dataclasses.replace(
        settings.paths,
        data=str(data),
        warehouse=str(data / "warehouse"),
        runs=str(data / "runs"),
        suites=str(suites or data / "suites"),
    )
    steps = dataclasses.replace(settings.steps, only=STEPS)
    return dataclasses.replace(settings, paths=paths, steps=steps, progress=False)


def counts(root: Path | str, runs_like: str = "%") -> dict[str, int]:
    """Rows per table (of the runs whose id is like ``runs_like``)."""
    con = warehouse.connect(root)
    try:
        return {
            t: con.sql(f"select count(*) from {t} where run_id like $r", params={"r": runs_like}).fetchall()[
                0
            ][0]
            for t in schema.TABLES
        }
    finally:
        con.close()


@pytest.fixture
def extracted(tiny_suite, tmp_path):
    """A data folder holding a copy of the tiny suite and a warehouse extracted from it."""
    settings, suites = tiny_suite
    data = tmp_path / "data"
    shutil.copytree(suites, data / "suites")
    mine = under(settings, data)
    report = run_extract(mine)
    assert report.ok and report.committed
    return mine


def test_a_moved_data_folder_is_not_extracted_again(extracted, tmp_path, capsys):
    before = counts(extracted.paths.warehouse)
    moved = tmp_path / "elsewhere" / "data"
    moved.parent.mkdir()
    shutil.move(extracted.paths.data, moved)
    again = run_extract(under(extracted, moved))
    assert again.committed == [] and again.skipped == again.planned > 0
    assert again.duplicates == []  # never a checkpoint "identical" to itself
    assert counts(moved / "warehouse") == before
    assert main(["check", "--root", str(moved / "warehouse")]) == 0
    capsys.readouterr()
    overrides = [f"paths.data={moved}", *TINY_OVERRIDES, f"steps.only=[{','.join(map(str, STEPS))}]"]
    assert main(["demo", *overrides]) == 0  # the demo, too, finds everything committed
    out = capsys.readouterr().out.replace("\n", " ")
    assert "extracted 0 checkpoint(s)" in out
    # ... and then trains a second seed of the smallest model through the tracker, and compares the two
    assert "a second seed of tiny-a" in out and "Do two seeds of tiny-a reach the same" in out
    assert counts(moved / "warehouse", "embedded.tiny-_") == before
    seeds = counts(moved / "warehouse", "embedded.tiny-a.seed%")
    assert seeds["runs"] == 1 and seeds["scalars"] > 0 and seeds["sketches"] > 0
    stored = (
        warehouse.connect(moved / "warehouse").sql("select distinct location from checkpoints").fetchall()
    )
    assert all(not loc.startswith("/") for (loc,) in stored)  # no path of the machine is stored


def test_an_imported_dataset_is_not_extracted_again_from_another_path(extracted, tmp_path):
    export_dataset(extracted.paths.warehouse, tmp_path / "shared")
    other = tmp_path / "other"
    shutil.copytree(extracted.paths.suites, other / "suites")  # the same checkpoints, somewhere else
    import_dataset(tmp_path / "shared", other / "warehouse")
    before = counts(other / "warehouse")
    again = run_extract(under(extracted, other))
    assert again.committed == [] and again.skipped == again.planned
    assert counts(other / "warehouse") == before


def test_a_checkpoint_whose_weights_changed_is_extracted_again(extracted):
    folder = Path(extracted.paths.suites) / "embedded" / "tiny-a"
    shutil.copy(
        folder / "step0" / "model.safetensors", folder / "step8" / "model.safetensors"
    )  # other weights
    again = run_extract(extracted)
    assert again.committed == ["tiny-a step8"] and again.replaced == 1
    con = warehouse.connect(extracted.paths.warehouse)
    rows = con.sql(
        "select step, weights_sha256 from checkpoints where model = 'tiny-a' order by step"
    ).fetchall()
    assert rows[0][1] == rows[1][1]  # step 8 now holds step 0's weights, and its rows say so
    assert again.duplicates == [("tiny-a", 8, 0)]


def checkpoint_rows(root: Path | str, model: str, step: int) -> dict[str, list]:
    """Every row of one checkpoint, per table (the runs' rows aside: they hold times)."""
    con = warehouse.connect(root)
    try:
        return {
            table: sorted(
                map(
                    repr,
                    con.sql(
                        f"select * from {table} where model = $m and step = $s",
                        params={"m": model, "s": step},
                    ).fetchall(),
                )
            )
            for table in ("checkpoints", "activation_stats", "sketches", "spectra", "matrix_stats")
        }
    finally:
        con.close()


def test_a_checkpoint_whose_config_changed_is_extracted_again(extracted, tmp_path):
    """config.json alone changes (use_parallel_residual flipped; the weights file untouched): the checkpoint
    is extracted again, its rows replaced by those a fresh warehouse gets from the folder as it is now."""
    import io

    from rich.console import Console

    from layerlake.etl.command import print_report

    config_file = Path(extracted.paths.suites) / "embedded" / "tiny-a" / "step8" / "config.json"
    config = json.loads(config_file.read_text())
    config["use_parallel_residual"] = not config["use_parallel_residual"]
    config_file.write_text(json.dumps(config))
    again = run_extract(extracted)
    assert again.committed == ["tiny-a step8"] and again.replaced == again.changed == 1
    out = io.StringIO()
    print_report(again, extracted.paths.warehouse, Console(file=out, width=300))
    assert "1 from checkpoint files that changed since (weights or config.json)" in out.getvalue()
    assert "with other extraction options" not in out.getvalue()

    fresh = under(extracted, tmp_path / "fresh", suites=Path(extracted.paths.suites))
    fresh = dataclasses.replace(fresh, models=["tiny-a"], steps=dataclasses.replace(fresh.steps, only=[8]))
    assert run_extract(fresh).ok
    stored = checkpoint_rows(extracted.paths.warehouse, "tiny-a", 8)
    assert stored == checkpoint_rows(fresh.paths.warehouse, "tiny-a", 8)
    assert (
        f'"use_parallel_residual": {json.dumps(config["use_parallel_residual"])}' in stored["checkpoints"][0]
    )
    assert run_extract(extracted).committed == []  # and then it is committed as it is


def test_the_fingerprint_covers_what_changes_the_forward(extracted):
    """config.json always, the folder's Python files with trust_remote_code (the model's own code); not
    generation_config.json (generation only) nor tokenizer files (the probe's ids are the task's identity)."""
    from layerlake.etl.sources import checkpoint_fingerprint, open_source

    (ref,) = open_source(extracted.suite, extracted.paths.suites).refs("tiny-a", [8])
    folder = Path(ref.location)
    (folder / "modeling_mine.py").write_text("# a model's own code\n")
    (folder / "tokenizer.json").write_text("{}")
    assert set(checkpoint_fingerprint(ref)["files"]) == {"model.safetensors", "config.json"}
    remote = dataclasses.replace(ref, trust_remote_code=True)
    assert set(checkpoint_fingerprint(remote)["files"]) == {
        "model.safetensors",
        "config.json",
        "modeling_mine.py",
    }


def test_an_entry_that_fingerprinted_its_weights_file_alone_is_compared_on_it(extracted):
    """A manifest entry committed before config.json (and shards) were fingerprinted recorded the weights
    file's size, mtime and sha256 alone: it stays committed (an upgrade extracts nothing again) until that
    file changes."""
    from types import SimpleNamespace

    from layerlake.etl.checkpoint_files import file_fingerprint
    from layerlake.etl.driver import files_unchanged
    from layerlake.etl.sources import open_source

    (ref,) = open_source(extracted.suite, extracted.paths.suites).refs("tiny-a", [8])
    task, folder = SimpleNamespace(ref=ref), Path(ref.location)
    legacy = file_fingerprint(folder / "model.safetensors")
    assert set(legacy) == {"size", "mtime_ns", "sha256"}
    assert files_unchanged(task, legacy)
    shutil.copy(folder.parent / "step0" / "model.safetensors", folder / "model.safetensors")
    assert not files_unchanged(task, legacy)


def write_schema1(root: Path, into: Path, moved_copy: bool = True) -> None:
    """The warehouse at ``root`` as layerlake's schema 1 stored it: files under key=value folders without
    the identity columns, task ids hashing the checkpoint's absolute folder, and (``moved_copy``) the
    same checkpoints committed a second time from another folder, as a moved data folder did."""
    entries, lines = read_entries(root / "_manifest" / "commits.jsonl"), []
    latest = {e.task_id: e for e in entries if e.status == "ok"}
    for copy in [False, True] if moved_copy else [False]:
        for entry in latest.values():
            if entry.meta.get("kind") == "run":
                continue  # schema 1 had no runs
            task_id = entry.task_id + ("x" if copy else "")
            files = []
            for f in entry.files:
                table = pq.read_table(root / f.path).drop_columns(list(schema.IDENTITY_COLUMNS))
                if "gram" in table.column_names:  # before schema 3 a Gram was a list of floats
                    table = table.set_column(
                        table.column_names.index("gram"), "gram", values_column(table["gram"])
                    )
                if f.table == "checkpoints":
                    where = f"/old/{'moved' if copy else 'data'}/suites/{entry.suite}/{entry.model}/{entry.meta['revision']}"
                    table = table.set_column(table.column_names.index("location"), "location", [[where]])
                rel = f"{f.table}/suite={entry.suite}/model={entry.model}/part-{task_id}.parquet"
                (into / rel).parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(table, into / rel)
                files.append({"table": f.table, "path": rel, "sha256": "0" * 64, "rows": table.num_rows,
                              "bytes": (into / rel).stat().st_size})  # fmt: skip
            meta = {k: v for k, v in entry.meta.items() if k != "weights_file"}
            if "location" in meta:
                meta["location"] = f"/old/{'moved' if copy else 'data'}/suites/{entry.suite}/{entry.model}/x"
                meta["source"] = "local"
            line = {"status": "ok", "task_id": task_id, "suite": entry.suite, "model": entry.model, "files": files,
                    "meta": meta, "schema_version": 1, "committed_at": entry.committed_at}  # fmt: skip
            lines.append(json.dumps(line))
    (into / "_manifest").mkdir(parents=True)
    (into / "_manifest" / "commits.jsonl").write_text("\n".join(lines) + "\n")


def test_a_schema_1_warehouse_migrates_once_and_duplicates_collapse(extracted, tmp_path, capsys):
    old = tmp_path / "old"
    write_schema1(Path(extracted.paths.warehouse), old)
    with pytest.raises(WarehouseError, match="older layerlake"):
        warehouse.connect(old)
    assert main(["check", "--root", str(old)]) == 1
    out = capsys.readouterr().out
    assert "FAIL schema_version" in out and "layerlake" in out and "migrate" in out
    assert main(["migrate", "--root", str(old)]) == 0
    out = capsys.readouterr().out
    assert "duplicate tasks of moved checkpoints collapsed" in out
    migrated, original = counts(old), counts(extracted.paths.warehouse)
    assert migrated == original  # every row, once: the moved copies collapsed into their checkpoints
    assert main(["check", "--root", str(old)]) == 0
    assert main(["migrate", "--root", str(old)]) == 0 and "nothing to migrate" in capsys.readouterr().out
    # The migrated warehouse is what extraction would have written: nothing to extract again.
    shutil.copytree(extracted.paths.suites, tmp_path / "data2" / "suites")
    shutil.copytree(old, tmp_path / "data2" / "warehouse")
    again = run_extract(under(extracted, tmp_path / "data2"))
    assert again.committed == [] and again.skipped == again.planned


def test_import_restores_missing_or_damaged_local_files(extracted, tmp_path, capsys):
    export_dataset(extracted.paths.warehouse, tmp_path / "shared")
    root = Path(extracted.paths.warehouse)
    entry = next(e for e in Warehouse(root).committed().values() if e.meta.get("kind") == "extract")
    lost, damaged = root / entry.files[0].path, root / entry.files[1].path
    lost.unlink()
    data = bytearray(damaged.read_bytes())
    damaged.write_bytes(bytes(data[:-10]))  # truncated
    assert main(["check", "--root", str(root)]) == 1
    capsys.readouterr()
    assert main(["share", "import", str(tmp_path / "shared"), "--root", str(root)]) == 0
    assert "restored 2 missing or damaged local file(s)" in capsys.readouterr().out
    assert main(["check", "--root", str(root), "--verify-files"]) == 0


def test_paths_of_a_crafted_manifest_never_leave_their_root(extracted, tmp_path):
    root = Path(extracted.paths.warehouse)
    secret = tmp_path / "secret.parquet"
    shutil.copy(next(root.glob("probes/*/*/*.parquet")), secret)
    manifest = root / "_manifest" / "commits.jsonl"
    # read by the manifest's own reader: a run's start writes its run and probe rows as one batch line
    probe = next(e.to_json() for e in read_entries(manifest) if e.task_id.startswith("probe-"))
    crafted = dict(probe, task_id="probe-crafted", files=[dict(probe["files"][0], path="../secret.parquet")])
    manifest.write_text(manifest.read_text() + json.dumps(crafted) + "\n")
    con = warehouse.connect(root)
    paths = [p for (p,) in con.sql("select path from manifest").fetchall()]
    assert str(secret) not in paths and all(p.startswith(str(root)) for p in paths)
    with pytest.raises(ShareError, match="not a shard path"):
        export_dataset(root, tmp_path / "export")  # and nothing is written outside the export
    assert not (tmp_path / "export").exists() and not list(tmp_path.glob(".export*"))


def test_links_are_refused_in_a_warehouse_and_in_a_shared_folder(extracted, tmp_path, capsys):
    export_dataset(extracted.paths.warehouse, tmp_path / "shared")
    shared = tmp_path / "shared"
    # a table folder replaced by a link to a copy elsewhere
    shutil.move(shared / "sketches", tmp_path / "real-sketches")
    os.symlink(tmp_path / "real-sketches", shared / "sketches")
    with pytest.raises(ShareError, match="symbolic link"):
        import_dataset(shared, tmp_path / "w2")
    with pytest.raises(ManifestError, match="symbolic link"):
        warehouse.connect(tmp_path / "missing", attach=[shared])
    assert main(["sql", "--attach", str(shared), "select 1"]) == 2
    assert "symbolic link" in capsys.readouterr().err
    # a shard of the warehouse itself replaced by a link: its task is hidden and check names it
    root = Path(extracted.paths.warehouse)
    victim = next(root.glob("sketches/*/*/*.parquet"))
    victim.unlink()
    os.symlink(next(root.glob("spectra/*/*/*.parquet")), victim)
    assert str(victim) not in [
        p for (p,) in warehouse.connect(root).sql("select path from manifest").fetchall()
    ]
    assert main(["check", "--root", str(root)]) == 1
    assert "symbolic link" in capsys.readouterr().out


def test_an_attached_folder_whose_manifest_leaves_it_is_refused(extracted, tmp_path, capsys):
    """A shared folder's manifest.json listing ``../secret.parquet`` (a real Parquet file of the right
    size outside the folder): attaching it by Python, ``share attach`` and ``sql --attach`` all refuse."""
    shared = tmp_path / "shared"
    export_dataset(extracted.paths.warehouse, shared)
    listing = json.loads((shared / "manifest.json").read_text())
    listed = listing["tasks"][0]["files"][0]
    shutil.copy(shared / listed["path"], tmp_path / "secret.parquet")
    listed["path"] = "../secret.parquet"
    (shared / "manifest.json").write_text(json.dumps(listing))
    with pytest.raises(ManifestError, match="not a shard path"):
        warehouse.connect(tmp_path / "missing", attach=[shared])
    assert (
        main(["share", "attach", str(shared), "--root", str(tmp_path / "missing"), "--sql", "select 1"]) == 2
    )
    assert "not a shard path" in capsys.readouterr().err.replace("\n", " ")
    assert main(["sql", "--attach", str(shared), "select 1"]) == 2
    assert "not a shard path" in capsys.readouterr().err.replace("\n", " ")


def test_attaching_needs_no_local_warehouse(extracted, tmp_path, capsys):
    export_dataset(extracted.paths.warehouse, tmp_path / "shared")
    missing = tmp_path / "nothing-here"
    assert main(["share", "attach", str(tmp_path / "shared"), "--root", str(missing), "--sql",
                 "select count(*) as n from checkpoints"]) == 0  # fmt: skip
    assert f"{len(STEPS) * 2}" in capsys.readouterr().out
    assert main(["sql", "--root", str(missing), "--attach", str(tmp_path / "shared"),
                 "select count(*) as n from checkpoints"]) == 0  # fmt: skip


def test_a_checkpoint_whose_config_and_weights_disagree_fails_its_own_task(extracted):
    folder = Path(extracted.paths.suites) / "embedded" / "tiny-b"
    config = json.loads((folder / "step8" / "config.json").read_text())
    config["num_hidden_layers"] = 1  # its weights hold 2 layers
    (folder / "step8" / "config.json").write_text(json.dumps(config))
    (folder / "step32" / "model.safetensors").rename(folder / "step32" / "pytorch_model.bin")  # a pickle only
    fresh = under(extracted, Path(extracted.paths.data).parent / "fresh", suites=Path(extracted.paths.suites))
    report = run_extract(fresh)
    failed = dict(report.failed)
    assert set(failed) == {"tiny-b step8", "tiny-b step32"}
    assert "config.json and its weights disagree" in failed["tiny-b step8"]
    assert "model.safetensors" in failed["tiny-b step32"]
    assert len(report.committed) == report.planned - 2  # every other checkpoint still lands
