"""``scalars.rank`` (schema 4): a run of one process stores its numbers with rank NULL, ``reduce`` is
checked in one process too, and a schema-3 warehouse migrates in one step to schema 4: rank NULL in its
old scalars, the default options' ``eps`` in its old activation_stats and spectra, every other file
(a probe's) where it was."""

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


ADDED_IN_4 = {"scalars": "rank", "activation_stats": "eps", "spectra": "eps"}  # what schema 3 files lack


def as_schema_3(root: Path) -> None:
    """The warehouse as schema 3 wrote it: scalars files without ``rank``, activation_stats and spectra
    without ``eps``, version 3 everywhere."""
    manifest = root / "_manifest" / "commits.jsonl"
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    rewritten: dict[str, tuple[str, int]] = {}  # a merged file (compacted) listed by several tasks: once
    for line in lines:
        line["schema_version"] = 3
        for f in line.get("files", []):
            if f["table"] in ADDED_IN_4:
                if f["path"] not in rewritten:
                    path = root / f["path"]
                    table = pq.read_table(path).drop_columns([ADDED_IN_4[f["table"]]])
                    metadata = {**(table.schema.metadata or {}), b"layerlake.schema_version": b"3"}
                    pq.write_table(table.replace_schema_metadata(metadata), path)
                    data = path.read_bytes()
                    rewritten[f["path"]] = (sha256_bytes(data), len(data))
                f["sha256"], f["bytes"] = rewritten[f["path"]]
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


def test_a_schema_3_warehouse_migrates_in_one_step_with_rank_null_and_default_eps(tmp_path):
    tracked(tmp_path)
    con = layerlake.connect(tmp_path)
    queries = {
        "scalars": "select * exclude (rank) from scalars",
        "activation_stats": "select * exclude (eps) from activation_stats",
        "spectra": "select * exclude (eps) from spectra",
    }
    want = {t: sorted(con.sql(q).fetchall(), key=repr) for t, q in queries.items()}
    con.close()
    assert all(want.values())  # the run logged scalars and took a snapshot
    as_schema_3(tmp_path)
    before = {e.task_id: e.files for e in Warehouse(tmp_path).committed().values()}
    assert any(not {f.table for f in files} & set(ADDED_IN_4) for files in before.values())  # the probe's
    with pytest.raises(LayerlakeError, match="migrate"):
        layerlake.connect(tmp_path)
    report = migrate(tmp_path)
    assert report.tasks == len(before)
    after = Warehouse(tmp_path).committed()
    assert {e.schema_version for e in after.values()} == {schema.SCHEMA_VERSION}
    for task_id, files in before.items():  # the files of the three tables are written again, others kept
        rewritten = any(f.table in ADDED_IN_4 for f in files)
        assert (after[task_id].files != files) == rewritten, task_id
    con = layerlake.connect(tmp_path)
    assert {t: sorted(con.sql(q).fetchall(), key=repr) for t, q in queries.items()} == want
    assert con.sql("select distinct rank from scalars").fetchall() == [(None,)]
    # the precision the default options computed in: a float32 pass, float64 SVDs of the weights
    assert con.sql("select distinct eps from activation_stats").fetchall() == [(2.0**-23,)]
    assert sorted(con.sql("select distinct tensor, eps from spectra").fetchall()) == [
        ("grad", 2.0**-23), ("weight", 2.0**-52),
    ]  # fmt: skip
    con.close()
    assert check(["--root", str(tmp_path), "--verify-files"]) == 0
    assert migrate(tmp_path).tasks == 0
