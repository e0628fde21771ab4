"""``scalars.rank`` (schema 4): a run of one process stores its numbers with rank NULL, ``reduce`` is
checked in one process too, and a schema-3 warehouse migrates with rank NULL in its old rows while
every other file stays where it was."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import layerlake
from layerlake.core.errors import ConfigError, LayerlakeError
from layerlake.core.hashing import sha256_bytes
from layerlake.warehouse import schema
from layerlake.warehouse.command import check
from layerlake.warehouse.migrate import migrate
from layerlake.warehouse.writer import Warehouse

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models  # noqa: E402

PROBE = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]]


def tracked(root: Path) -> None:
    model = tiny_models.neox(seed=0)
    with layerlake.track(model, suite="toy", run_id="r", warehouse=root, probe=PROBE, cadence=[0]) as run:
        for step in range(3):
            run.log(step, loss=1.0 + step, reduce="mean")  # one process: the run's value whatever reduce says
        run.snapshot(0, model)


def as_schema_3(root: Path) -> None:
    """The warehouse as schema 3 wrote it: scalars files without ``rank``, version 3 everywhere."""
    manifest = root / "_manifest" / "commits.jsonl"
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    for line in lines:
        line["schema_version"] = 3
        for f in line.get("files", []):
            if f["table"] == "scalars":
                table = pq.read_table(root / f["path"]).drop_columns(["rank"])
                pq.write_table(
                    table.replace_schema_metadata({b"layerlake.schema_version": b"3"}), root / f["path"]
                )
                data = (root / f["path"]).read_bytes()
                f["sha256"], f["bytes"] = sha256_bytes(data), len(data)
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_one_process_stores_rank_null_and_checks_reduce(tmp_path):
    tracked(tmp_path)
    con = layerlake.connect(tmp_path)
    assert con.sql("select step, value, rank from scalars order by step").fetchall() == [
        (0, 1.0, None), (1, 2.0, None), (2, 3.0, None),
    ]  # fmt: skip
    run = layerlake.track(suite="toy", warehouse=tmp_path / "other", quiet=True)
    with run, pytest.raises(ConfigError, match="reduce 'avg' is not one of"):
        run.log(0, reduce="avg", loss=1.0)


def test_a_schema_3_warehouse_migrates_with_rank_null_and_keeps_other_files(tmp_path):
    tracked(tmp_path)
    want = sorted(layerlake.connect(tmp_path).sql("select * from scalars").fetchall(), key=repr)
    as_schema_3(tmp_path)
    before = {e.task_id: e.files for e in Warehouse(tmp_path).committed().values()}
    with pytest.raises(LayerlakeError, match="migrate"):
        layerlake.connect(tmp_path)
    report = migrate(tmp_path)
    assert report.tasks == len(before)
    after = Warehouse(tmp_path).committed()
    assert {e.schema_version for e in after.values()} == {schema.SCHEMA_VERSION}
    for task_id, files in before.items():  # only the scalars files are written again
        rewritten = any(f.table == "scalars" for f in files)
        assert (after[task_id].files != files) == rewritten, task_id
    got = sorted(layerlake.connect(tmp_path).sql("select * from scalars").fetchall(), key=repr)
    assert [row[:-1] for row in got] == [row[:-1] for row in want]  # logged_at, value ... kept
    assert {row[-1] for row in got} == {None}
    assert check(["--root", str(tmp_path), "--verify-files"]) == 0
