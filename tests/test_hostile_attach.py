"""Attach shows each task once (issue 22.3), whichever side is compacted: a merged file some of whose
tasks are shown from the other copy is read by its kept tasks' slices only; the ``manifest`` view has
one row per (task, file) and its rows add up to what each table holds."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hostile_data import build

import layerlake
from layerlake.warehouse import schema
from layerlake.warehouse.compact import compact
from layerlake.warehouse.share import export_dataset

STEPS = (0, 10, 20, 30)


@pytest.fixture(scope="module")
def sides(tmp_path_factory) -> dict[str, Path]:
    """The same run as four warehouses: plain, compacted, a plain subset (steps 0, 10) and a shared
    export of the compacted one."""
    base = tmp_path_factory.mktemp("attach")
    plain, merged, part = base / "plain", base / "merged", base / "part"
    build(plain, steps=STEPS)
    shutil.copytree(plain, merged)
    compact(merged)
    build(part, steps=STEPS[:2], logged=STEPS)
    export_dataset(merged, base / "export")
    return {"plain": plain, "merged": merged, "part": part, "export": base / "export"}


def counts(root: Path, attach: tuple = ()) -> dict[str, int]:
    con = layerlake.connect(root, attach=attach)
    try:
        out = {t: con.sql(f"select count(*) from {t}").fetchall()[0][0] for t in schema.TABLES}
        listed = dict(con.sql("select table_name, sum(rows)::BIGINT from manifest group by all").fetchall())
        distinct = dict(
            con.sql("select table_name, count(distinct task_id) from manifest group by all").fetchall()
        )
    finally:
        con.close()
    assert {t: listed.get(t, 0) for t in schema.TABLES} == out  # the manifest counts what the tables hold
    return out | {f"tasks:{t}": n for t, n in distinct.items()}


@pytest.mark.parametrize(
    ("root", "other"),
    [("plain", "merged"), ("merged", "plain"), ("part", "merged"), ("part", "export"), ("merged", "export")],
)
def test_each_task_shows_once_whichever_side_is_compacted(sides, root, other):
    alone = counts(sides["plain"])
    assert alone["spectra"] == len(STEPS)
    assert counts(sides[root], attach=(sides[other],)) == alone
    assert counts(sides["merged"]) == alone  # the compacted warehouse alone: the same rows and tasks
