"""A tiny warehouse with rows in every table, written through the writer's own paths (``begin_run``,
``commit_probe``, ``Warehouse.commit``, ``run_admin.tag`` and ``run_admin.note``), and a way to tamper with an export of it as a hostile sender
would (rewritten rows or meta, with sha256, sizes and paths made to match again)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from layerlake.core.hashing import sha256_file
from layerlake.warehouse import run_admin, schema
from layerlake.warehouse.content import ANNOTATION_COUNTS, ANNOTATIONS
from layerlake.warehouse.gram import pack
from layerlake.warehouse.layout import checkpoint_task_id
from layerlake.warehouse.runs import Run, RunKind, RunStatus, begin_run, commit_probe, end_run
from layerlake.warehouse.shards import parquet_bytes
from layerlake.warehouse.share.layout import dataset_id, parse_shard_path
from layerlake.warehouse.writer import Warehouse

SUITE, PROBE = "toy", "p0"
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def sha(run_id: str, step: int) -> str:
    return hashlib.sha256(f"{run_id}@{step}".encode()).hexdigest()


def probe_row() -> dict:
    return {"probe_id": PROBE, "source": "embedded", "n_sequences": 2, "seq_len": 3, "positions": "last",
            "n": 2, "seed": None}  # fmt: skip


def checkpoint_rows(model: str, run_id: str, step: int) -> dict[str, pa.Table]:
    """One checkpoint's rows of every checkpoint table (2 probe rows, 2 features)."""
    w, rng = sha(run_id, step), np.random.default_rng(step)  # a run's checkpoint, whatever its model
    key = {"step": step, "weights_sha256": w, "layer": 0}
    x = rng.normal(size=(2, 2))
    gram = pack((x @ x.T).astype(np.float32))
    rows = {
        "checkpoints": [{"revision": f"step{step}", "step": step, "tokens_seen": step * 10, "source": "local",
                         "location": f"{SUITE}/{model}/step{step}", "weights_sha256": w, "n_params": 4,
                         "architecture": "gpt_neox", "n_layers": 1, "d_model": 2, "n_heads": 1, "d_head": 2,
                         "config_json": "{}", "probe_id": PROBE,
                         "task_id": checkpoint_task_id(SUITE, model, run_id, f"step{step}", PROBE)}],
        "activation_stats": [{**key, "site": "mlp_out", "head": None, "probe_id": PROBE, "n": 2, "d": 2,
                              "mean_norm": 1.0, "rms": 1.0, "std": 1.0, "max_abs": 2.0, "kurtosis": 0.0,
                              "frac_near_zero": 0.0, "sv": [2.0, 1.0], "eps": 2.0**-23}],
        "sketches": [{**key, "site": "mlp_out", "head": None, "probe_id": PROBE, "kernel": "linear",
                      "estimator": "biased", "n": 2, "d": 2, "gram": gram.tolist(),
                      "gram_norm": float(np.linalg.norm(gram))}],
        "spectra": [{**key, "tensor": "weight", "matrix": "dense", "head": None, "rows": 2, "cols": 2,
                     "sv": [2.0 + step, 1.0], "probe_id": None, "eps": 2.0**-52}],
        "matrix_stats": [{**key, "tensor": "weight", "matrix": "dense", "head": None, "rows": 2, "cols": 2,
                          "gini": 0.1, "hoyer": 0.2, "inf_norm": 1.0, "probe_id": None}],
        "activations": [{**key, "site": "mlp_out", "probe_id": PROBE, "n": 2, "d": 2,
                         "x": x.astype("<f2").tobytes()}],
        "imported_metrics": [{"source": "paper", "step": step, "layer": 0, "site": "mlp_out", "metric": "cka",
                              "value": 0.5}],
    }  # fmt: skip
    return {
        name: pa.Table.from_pylist(r, schema=schema.table(name).arrow_schema()) for name, r in rows.items()
    }


def extract_meta(step: int, run_id: str) -> dict:
    return {"kind": "extract", "revision": f"step{step}", "step": step, "tokens_seen": step * 10,
            "source": "local", "probe_id": PROBE, "weights_sha256": sha(run_id, step)}  # fmt: skip


def build(root: Path, model: str = "m1", run_id: str = "r1", steps=(0, 10), logged=None) -> Warehouse:
    """A run of ``model`` (begin_run, its probe, one task per step with every checkpoint table, a block of
    scalars of the ``logged`` steps (default: ``steps``), end_run, then two tags and a note). Times are
    fixed (``NOW``), so two builds hold the same keys: a note's key is its time."""
    store = Warehouse(root)
    run = begin_run(store, Run(run_id, SUITE, model, RunKind.train, started_at=NOW), probe_row())
    commit_probe(store, run_id, SUITE, model, probe_row())
    for step in steps:
        task = checkpoint_task_id(SUITE, model, run_id, f"step{step}", PROBE)
        store.commit(task, SUITE, model, checkpoint_rows(model, run_id, step), extract_meta(step, run_id),
                     run_id=run_id)  # fmt: skip
    scalars = pa.Table.from_pylist(
        [
            {"step": s, "name": "loss", "value": 1.0 / (s + 1), "logged_at": NOW, "rank": None}
            for s in (steps if logged is None else logged)
        ],
        schema=schema.SCALARS.arrow_schema(),
    )
    store.commit(f"scalars.{run_id}.0", SUITE, model, {"scalars": scalars}, {"kind": "scalars", "block": 0},
                 run_id=run_id)  # fmt: skip
    end_run(store, run, RunStatus.finished)
    run_admin.tag(store, run_id, {"group": "a", "verdict": "good run"}, at=NOW)
    run_admin.note(store, run_id, "loss fell as expected", at=NOW)
    return store


def tree_hash(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``: 'byte for byte unchanged'."""
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def tamper(
    folder: Path,
    table: str,
    rows: Callable[[pa.Table], pa.Table] | None = None,
    meta: Callable[[dict], None] | None = None,
    task: Callable[[dict], bool] | None = None,
) -> None:
    """Rewrite, in the exported ``folder``, the ``table`` file of the first task that ``task`` accepts:
    its rows through ``rows`` (a file schema table in, one out) and its task entry through ``meta`` (edits
    the entry's JSON in place); the file's name, sha256, size and row count (in the file list, and in an
    annotations task's meta) and the dataset id are made to match again, so only the content is hostile."""  # fmt: skip
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = next(t for t in manifest["tasks"] if any(f["table"] == table for f in t["files"])
                 and (task is None or task(t)))  # fmt: skip
    listed = next(f for f in entry["files"] if f["table"] == table)
    if rows is not None:
        old = folder / listed["path"]
        name = parse_shard_path(listed["path"])
        new_rows = rows(pq.read_table(old).replace_schema_metadata(None))
        data = parquet_bytes(table, new_rows, name.task_id)
        digest = hashlib.sha256(data).hexdigest()
        path = f"{table}/{name.suite}/{name.model}/{name.task_id}-{digest[:16]}.parquet"
        old.unlink()
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
        change = {"path": path, "sha256": digest, "bytes": len(data), "rows": new_rows.num_rows}
        for f in manifest["files"]:
            if f["path"] == listed["path"]:
                f.update(change)
        listed.update(change)
    if rows is not None and entry["meta"].get("kind") == ANNOTATIONS:  # its meta counts its rows
        entry["meta"][ANNOTATION_COUNTS[table]] = listed["rows"]
    if meta is not None:
        meta(entry)
    manifest["dataset_id"] = dataset_id(
        (f["path"], f["sha256"]) for f in manifest["files"]
    )  # its files' hash
    (folder / "manifest.json").write_text(json.dumps(manifest))


def set_column(table: pa.Table, column: str, values: list) -> pa.Table:
    index = table.column_names.index(column)
    return table.set_column(
        index, table.schema.field(column), pa.array(values, table.schema.field(column).type)
    )


def rewrite_header(path: Path, change: Callable[[dict], None]) -> None:
    """Rewrite a safetensors file's header with ``change(header)``, keeping its tensors' bytes (a weights
    file that lies about its tensors)."""
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    change(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + size :])
