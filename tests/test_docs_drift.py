"""The docs say what the code does: the shard layout, the schema version and the dataset card's provenance
are derived from the code's constants, and a test fails when a document drifts from them."""

from __future__ import annotations

import re
from pathlib import Path

import torch

import layerlake
from layerlake.etl.plan import CODE_VERSION
from layerlake.warehouse import schema
from layerlake.warehouse.layout import SHARD_PATTERN
from layerlake.warehouse.runs import RunKind, commit_run, new_run
from layerlake.warehouse.share.export import export_dataset
from layerlake.warehouse.synthetic import checkpoint_tables
from layerlake.warehouse.writer import Warehouse

REPO = Path(__file__).resolve().parents[1]
DOCS = [*sorted((REPO / "docs").glob("*.md")), REPO / "README.md", REPO / "queries" / "README.md"]
CODE = sorted(p for folder in ("warehouse", "etl", "queries", "src") for p in (REPO / folder).rglob("*.py"))
# Schema 1's hive layout is named only where old warehouses are recognised and migrated.
SCHEMA_1_PLACES = {REPO / "warehouse" / "layout.py", REPO / "warehouse" / "migrate.py"}


def test_every_shard_path_quoted_in_docs_and_code_is_the_layout_of_the_code():
    template = re.compile(r"<table>/<[^\s`'\"|)]*?\.parquet")  # a file's path; globs (<table>/**) aside
    quoted = {}
    for path in DOCS + CODE:
        if path in SCHEMA_1_PLACES:
            continue
        for found in template.findall(path.read_text()):
            quoted.setdefault(found, []).append(path.relative_to(REPO).as_posix())
    assert quoted, "no shard path quoted anywhere: the pattern is wrong"
    stale = {k: v for k, v in quoted.items() if k != SHARD_PATTERN}
    assert not stale, f"shard paths other than {SHARD_PATTERN}: {stale}"
    for path in DOCS + CODE:
        if path in SCHEMA_1_PLACES:
            continue
        text = path.read_text()
        assert not re.search(r"suite=<\w+>/|part-<|hive_partitioning|hive-partitioned", text), (
            f"{path.relative_to(REPO)} describes schema 1's hive layout"
        )


def test_the_schema_version_the_docs_give_is_the_codes():
    found = []
    for path in DOCS:
        text = path.read_text()
        found += [(path.name, int(v)) for v in re.findall(r"`SCHEMA_VERSION` \((\d+)", text)]
        found += [(path.name, int(v)) for v in re.findall(r"[Ss]chema version:? \*\*(\d+)\*\*", text)]
    assert {name for name, _ in found} >= {"design.md", "schema.md"}
    assert all(v == schema.SCHEMA_VERSION for _, v in found), found


def test_the_dataset_card_names_the_code_of_every_checkpoint(tmp_path):
    """A tracked run's snapshots record the code that took them; a checkpoint of an older run that did
    not takes its run's; the card never says None."""
    root = tmp_path / "warehouse"
    from tiny_models import neox

    live = neox(seed=0)
    probe = torch.randint(0, 40, (6, 12), generator=torch.Generator().manual_seed(0))
    # compact=False: an export of compacted files (shared by several tasks) is another matter
    with layerlake.track(
        live, suite="toy", run_id="live", warehouse=root, probe=probe, cadence=[0, 1], compact=False
    ) as run:
        for step in range(2):
            run.snapshot(step, live)
    older = new_run("older", "toy", "old-model", RunKind.train, {}, code_version="0.0.9")
    commit_run(Warehouse(root), older)
    rows = checkpoint_tables("old-model", 5, {}, {}, d=4)["checkpoints"]
    meta = {
        "kind": "extract",
        "revision": "step5",
        "step": 5,
    }  # as an older layerlake wrote it: no code_version
    Warehouse(root).commit("old-snapshot", "toy", "old-model", {"checkpoints": rows}, meta, run_id="older")
    export_dataset(root, tmp_path / "export")
    card = (tmp_path / "export" / "README.md").read_text()
    line = next(line for line in card.splitlines() if line.startswith("Code versions:"))
    assert f"{CODE_VERSION} (2 checkpoints)" in line and "0.0.9 (1 checkpoint)" in line, line
    assert "None" not in line
