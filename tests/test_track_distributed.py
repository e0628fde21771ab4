"""A run trained on two processes (gloo, CPU, started as torchrun starts them) is one run: DDP and FSDP2
snapshots committed once, equal to the same weights tracked in one process; every rank's numbers in
``scalars``; a rank killed inside a snapshot leaves whole rows and a run marked failed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import layerlake
from layerlake.warehouse.writer import Warehouse

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models  # noqa: E402
from ddp_workload import PROBE  # noqa: E402
from test_track import PROVENANCE, assert_close, rows_by_key  # noqa: E402

WORKLOAD = str(Path(__file__).parent / "ddp_workload.py")
ROW_TABLES = ("checkpoints", "activation_stats", "sketches", "spectra", "matrix_stats")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(root: Path, run_id: str, *args: str, world: int = 2) -> list[subprocess.Popen]:
    """``world`` ranks of tests/ddp_workload.py, with the environment torchrun gives its workers."""
    port = free_port()
    ranks = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}  # fmt: skip
        ranks.append(subprocess.Popen(
            [sys.executable, WORKLOAD, str(root), run_id, *args], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))  # fmt: skip
    return ranks


def finished(ranks: list[subprocess.Popen]) -> list[str]:
    outs = []
    for rank, job in enumerate(ranks):
        out, err = job.communicate(timeout=600)
        assert job.returncode == 0, f"rank {rank}: {err[-3000:]}"
        assert out.splitlines()[-1] == "done", out
        outs.append(out)
    return outs


def tracked_alone(root: Path, weights: Path, steps: list[int]) -> None:
    """The saved weights of each step, snapshotted in one process into ``root`` as run ``one``."""
    with layerlake.track(
        suite="dist", model_name="neox", run_id="one", warehouse=root, probe=PROBE, cadence=[], quiet=True
    ) as run:
        for step in steps:
            model = tiny_models.neox(seed=0)
            model.load_state_dict(torch.load(weights / f"step{step}.pt"))
            assert run.snapshot(step, model.train(), force=True)
    assert run.failures == []


def assert_same_rows(distributed: Path, alone: Path) -> None:
    """Every row table: the same keys and values (within tolerances), run ids aside."""
    for table in ROW_TABLES:
        a = {key[1:]: row for key, row in _rows(distributed, table).items()}
        b = {key[1:]: row for key, row in _rows(alone, table).items()}
        assert a.keys() == b.keys() and a, table
        for key, row in a.items():
            for column, value in row.items():
                if column not in PROVENANCE | {"run_id"}:
                    assert_close(value, b[key][column], f"{table} {key} {column}")


def _rows(root: Path, table: str) -> dict:
    rows = rows_by_key(root, table)
    return {
        (k[0], *(v for v, c in zip(k, _key(table), strict=True) if c != "run_id")): r for k, r in rows.items()
    }


def _key(table: str) -> tuple[str, ...]:
    from layerlake.warehouse import schema

    return schema.TABLES[table].key


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_a_two_process_run_is_one_run_with_the_rows_of_one_process(tmp_path, mode):
    weights = tmp_path / "weights"
    weights.mkdir()
    outs = finished(launch(tmp_path / "wh", "job", "--mode", mode, "--steps", "5", "--weights", str(weights)))
    # snapshots at 0, 2 and 4: the writer commits each once; under FSDP every rank takes part
    assert [line for line in outs[0].splitlines() if line.startswith("snapshot")] == [
        "snapshot 0", "snapshot 2", "snapshot 4",
    ]  # fmt: skip
    taken_by_rank_1 = [line for line in outs[1].splitlines() if line.startswith("snapshot")]
    assert taken_by_rank_1 == ([] if mode == "ddp" else ["snapshot 0", "snapshot 2", "snapshot 4"])
    con = layerlake.connect(tmp_path / "wh")
    assert con.sql("select run_id, status from runs").fetchall() == [("job", "finished")]
    assert con.sql("select list(step order by step) from checkpoints").fetchall() == [([0, 2, 4],)]
    extracts = [e for e in Warehouse(tmp_path / "wh").committed().values() if e.meta.get("kind") == "extract"]
    assert len(extracts) == 3
    # each rank's loss with its rank; the mean over ranks once, as the run's
    per_rank = con.sql(
        "select rank, list(step order by step) from scalars where name = 'loss' group by rank order by rank"
    ).fetchall()
    assert per_rank == [(0, list(range(5))), (1, list(range(5)))]
    pairs = con.sql(
        "select m.value, avg(r.value), count(*) from scalars m join scalars r using (run_id, step) "
        "where m.name = 'loss_mean' and m.rank is null and r.name = 'loss' group by m.step, m.value"
    ).fetchall()
    assert len(pairs) == 5 and all(n == 2 and mean == pytest.approx(avg, rel=1e-9) for mean, avg, n in pairs)
    losses = con.sql(
        "select rank, value from scalars where name = 'loss' and step = 0 order by rank"
    ).fetchall()
    assert losses[0][1] != losses[1][1]  # the ranks trained on their own batches
    con.close()
    tracked_alone(tmp_path / "alone", weights, [0, 2, 4])
    assert_same_rows(tmp_path / "wh", tmp_path / "alone")


@pytest.mark.parametrize(("mode", "dying"), [("ddp", 0), ("fsdp", 1)])
def test_a_rank_killed_inside_a_snapshot_leaves_whole_rows_and_the_run_failed(tmp_path, mode, dying):
    """The writer killed (DDP) or the other rank killed (FSDP, whose snapshot is a collective) in the
    snapshot of step 4: the snapshots before it are whole, none of step 4 is visible, and the rank left
    standing marks the run failed when the job's next collective finds the dead one."""
    ranks = launch(
        tmp_path, "victim", "--mode", mode, "--steps", "8", "--die-rank", str(dying), "--die-step", "4"
    )
    outs = []
    for job in ranks:
        out, err = job.communicate(timeout=600)
        outs.append((job.returncode, out, err))
    assert outs[dying][0] == -9 and "dying in 4" in outs[dying][1]
    survivor = outs[1 - dying]
    assert survivor[0] != 0 and "done" not in survivor[1]
    store = Warehouse(tmp_path)
    for entry in store.committed().values():
        assert store.problems(entry, verify_sha256=True) == []
    con = layerlake.connect(tmp_path)
    assert con.sql("select list(step order by step) from checkpoints").fetchall() == [([0, 2],)]
    per_step = con.sql("select step, count(*) from spectra group by step order by step").fetchall()
    assert [s for s, _ in per_step] == [0, 2] and per_step[0][1] == per_step[1][1] > 0
    status, error = con.sql("select status, error from runs where run_id = 'victim'").fetchall()[0]
    assert status == "failed" and f"rank {1 - dying}" in error
    con.close()


def test_ranks_agree_on_a_new_run_id_and_share_the_writers_refusal(tmp_path):
    """Without a run id the writer makes one and every rank uses it (one run, both ranks' numbers in it);
    a run id that exists already is refused on every rank, none left waiting."""
    finished(launch(tmp_path, "new", "--steps", "2", "--cadence", "100"))
    con = layerlake.connect(tmp_path)
    ((run_id,),) = con.sql("select run_id from runs").fetchall()
    assert run_id.startswith("neox-")
    ranks = con.sql("select distinct run_id, rank from scalars where name = 'loss' order by rank").fetchall()
    assert ranks == [(run_id, 0), (run_id, 1)]
    con.close()
    again = launch(tmp_path, run_id, "--steps", "2")
    for job in again:
        out, err = job.communicate(timeout=300)
        assert job.returncode != 0 and "exists already" in err and "resume=True" in err


# --- the sharded path's arithmetic, in one process ----------------------------------------------------------


def _tables_by_key(tables: dict) -> dict:
    from layerlake.warehouse import schema

    out = {}
    for name in ("activation_stats", "sketches", "spectra", "matrix_stats"):
        key = [c for c in schema.TABLES[name].key if c in tables[name].column_names]
        out[name] = {tuple(r[c] for c in key): r for r in tables[name].to_pylist()}
    return out


@pytest.mark.parametrize("family", ["neox", "llama", "gpt2"])
def test_the_sharded_path_on_a_whole_model_gives_the_rows_of_extract(family):
    """``etl.sharded`` with nothing sharded (a gather is then the tensor itself): the matrices it builds
    group by group, on stand-in blocks, are those ``extract_from_model`` builds from the whole model, for
    fused interleaved QKV (GPT-NeoX), separate q/k/v with grouped heads (llama) and Conv1D (GPT-2)."""
    from layerlake.etl.extract import extract_from_model
    from layerlake.etl.sharded import snapshot_sharded
    from layerlake.etl.task import CheckpointRef, ExtractOptions
    from layerlake.etl.track import live_probe

    model = getattr(tiny_models, family)(seed=0)
    probe = live_probe(PROBE)
    options = ExtractOptions(gradients=True)
    digest, sharded, _ = snapshot_sharded(model, 3, probe, options, writes=True)
    ref = CheckpointRef("s", "m", 3, "step3", 0, "live", "r", run_id="r")
    whole, _ = extract_from_model(model, ref, digest, probe, options)
    a, b = _tables_by_key(sharded), _tables_by_key(whole)
    for table in a:
        assert a[table].keys() == b[table].keys() and a[table], table
        for key, row in a[table].items():
            for column, value in row.items():
                assert_close(value, b[table][key][column], f"{table} {key} {column}")


def test_a_sharded_snapshot_without_gradients_is_refused_before_any_collective():
    from layerlake.etl.errors import ExtractionError
    from layerlake.etl.sharded import extract_sharded
    from layerlake.etl.task import ExtractOptions
    from layerlake.etl.track import live_probe

    with pytest.raises(ExtractionError, match="with gradients") as failure:
        extract_sharded(tiny_models.neox(), 0, "", live_probe(PROBE), ExtractOptions(gradients=False), True)
    assert "leave gradients on" in failure.value.fix
