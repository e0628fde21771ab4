"""A tracked run's logging path: any name is stored, a library's unusable value never stops training, numbers
are committed within seconds (and survive a SIGKILL), NaN is kept, the exit status is the script's, nothing
is accepted after the end, a step is snapshotted once, configs are plain JSON, W&B display names work."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import layerlake
from layerlake.core.errors import ConfigError
from layerlake.etl import session
from layerlake.etl.errors import RunFinishedError
from layerlake.etl.track import SCALAR_BLOCK
from layerlake.warehouse import run_table
from layerlake.warehouse.manifest import manifest_path, read_entries

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models  # noqa: E402

PROBE = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]]
OTHER_PROBE = [[4, 3, 2, 1], [8, 7, 6, 5], [12, 11, 10, 9], [16, 15, 14, 13]]


def query(root: Path, sql: str) -> list[tuple]:
    con = layerlake.connect(root)
    try:
        return con.sql(sql).fetchall()
    finally:
        con.close()


def extract_commits(root: Path) -> list[int]:
    """The step of every snapshot commit in the manifest, in order (a step twice: snapshotted twice)."""
    return [e.meta["step"] for e in read_entries(manifest_path(root)) if e.meta.get("kind") == "extract"]


def python(script: str, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
        env={"PATH": "/usr/bin:/bin", "LAYERLAKE_DATA": str(root.parent), "HOME": str(root.parent)},
    )  # fmt: skip


@pytest.fixture
def fresh_session(monkeypatch):
    """The W&B-style calls as in a new process (no run started or ended yet)."""
    monkeypatch.setattr(session, "_session", session._Session())


# --- any name ------------------------------------------------------------------------------------------


def test_any_name_is_logged_through_a_mapping_and_keywords_still_work(tmp_path, fresh_session):
    with layerlake.track(suite="toy", run_id="names", warehouse=tmp_path, quiet=True) as run:
        run.log(0, {"step": 7, "self": 1.0, "reduce": 0.5, "train/loss": 2.0}, lr=0.1)
        run.log(1, loss=1.0, self=3.0)
    layerlake.init(project="toy", id="wandb-names", dir=tmp_path, quiet=True)
    layerlake.log({"step": 7, "reduce": 0.5, "self": 1.0})
    layerlake.finish()
    stored = query(tmp_path, "select run_id, step, name, value from scalars order by all")
    assert stored == [
        ("names", 0, "lr", 0.1), ("names", 0, "reduce", 0.5), ("names", 0, "self", 1.0),
        ("names", 0, "step", 7.0), ("names", 0, "train/loss", 2.0), ("names", 1, "loss", 1.0),
        ("names", 1, "self", 3.0), ("wandb-names", 0, "reduce", 0.5), ("wandb-names", 0, "self", 1.0),
        ("wandb-names", 0, "step", 7.0),
    ]  # fmt: skip


# --- a library's values ----------------------------------------------------------------------------------


def test_a_library_value_that_is_no_number_is_left_out_said_once_and_never_raises(
    tmp_path, capsys, fresh_session
):
    from accelerate import Accelerator

    from layerlake.etl.integrations.accelerate import LayerlakeTracker

    tracker = LayerlakeTracker("acc-values", suite="toy", warehouse=tmp_path, quiet=True)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers("toy")
    unusable = {
        "is_best": True, "norms": torch.tensor([1.0, 2.0]), "big": 10**400, "note": "text",
        "eval": {"acc": 0.5}, "none": None, "arr": np.array([1.0, 2.0]),
    }  # fmt: skip
    for step in range(2):
        accelerator.log(
            {"loss": 1.0 + step, **unusable, "t": torch.tensor(4.0), "np": np.float32(2.5)}, step=step
        )
    accelerator.end_training()
    layerlake.init(project="toy", id="wandb-values", dir=tmp_path, quiet=True)
    layerlake.log({"big": 10**400, "loss": 1.0})
    layerlake.finish()
    err = capsys.readouterr().err
    for name in unusable:
        said = err.count(f"'{name}' is not a number")  # once per run and name, not once per call
        assert said == (2 if name == "big" else 1), (name, err)
    assert "'big' is not a number (an int past a float's range)" in err
    assert query(tmp_path, "select run_id, step, name, value from scalars order by all") == [
        ("acc-values", 0, "loss", 1.0), ("acc-values", 0, "np", 2.5), ("acc-values", 0, "t", 4.0),
        ("acc-values", 1, "loss", 2.0), ("acc-values", 1, "np", 2.5), ("acc-values", 1, "t", 4.0),
        ("wandb-values", 0, "loss", 1.0),
    ]  # fmt: skip
    run = layerlake.track(suite="toy", run_id="own", warehouse=tmp_path, quiet=True)
    with run, pytest.raises(ConfigError, match=r"big = .* is not a number \(an int past a float's range\)"):
        run.log(0, big=10**400)  # the caller's own call is told at once


# --- when numbers are committed ---------------------------------------------------------------------------


def test_wait_commits_the_numbers_logged_and_recommitting_a_block_replaces_its_rows(tmp_path):
    run = layerlake.track(suite="toy", run_id="waited", warehouse=tmp_path, quiet=True)
    run.flush_every_s = 3600.0  # no timer here: wait() alone must commit
    with run:
        for step in range(900):
            run.log(step, loss=1.0)
        run.wait()
        assert query(tmp_path, "select count(*), max(step) from scalars") == [(900, 899)]
        for step in range(890, SCALAR_BLOCK + 10):  # the block again (re-logged steps), and the next one
            run.log(step, loss=2.0)
        run.wait()
        assert query(tmp_path, "select count(*), count(distinct step), sum(value) from scalars") == [
            (SCALAR_BLOCK + 10, SCALAR_BLOCK + 10, 890 + 2.0 * (SCALAR_BLOCK + 10 - 890))
        ]


KILLED_RUN = """\
import os, signal, time, layerlake
run = layerlake.track(suite="toy", run_id="killed", quiet=True)
run.flush_every_s = 0.5
with run:
    for step in range(300):
        run.log(step, loss=1.0 / (step + 1))
    time.sleep(3)  # training goes on; no snapshot, no block boundary, no wait()
    os.kill(os.getpid(), signal.SIGKILL)  # an OOM kill
"""


def test_a_run_killed_outright_keeps_the_numbers_logged_seconds_before(tmp_path):
    root = tmp_path / "warehouse"
    done = python(KILLED_RUN, root)
    assert done.returncode == -9, done.stderr
    assert query(root, "select count(*), max(step) from scalars where run_id = 'killed'") == [(300, 299)]


# --- NaN and infinity --------------------------------------------------------------------------------------


def test_a_diverged_run_keeps_its_nan_and_the_runs_table_and_check_stay_sensible(tmp_path, capsys):
    from layerlake.cli.main import main
    from layerlake.ui.app import UiApp

    for run_id, last in (("two", 2.0), ("diverged", math.nan), ("one", 1.0), ("three", 3.0)):
        with layerlake.track(suite="toy", run_id=run_id, warehouse=tmp_path, quiet=True) as run:
            for step in range(3):
                run.log(step, loss=last if step == 2 else 5.0, grad_norm=math.inf if step == 2 else 1.0)
    err = capsys.readouterr().err
    assert "run diverged logged loss = nan at step 2 (stored" in err and "failures" not in err
    stored = query(tmp_path, "select step, value from scalars where run_id = 'diverged' and name = 'loss'")
    assert stored[:2] == [(0, 5.0), (1, 5.0)] and stored[2][0] == 2 and math.isnan(stored[2][1])
    assert query(tmp_path, "select max(value) from scalars where name = 'grad_norm'") == [(math.inf,)]
    assert main(["check", f"--root={tmp_path}"]) == 0
    capsys.readouterr()
    con = layerlake.connect(tmp_path)
    try:
        table = run_table.build(con)  # what `layerlake runs` prints and the UI's runs page shows
    finally:
        con.close()
    assert [r["run_id"] for r in table.select(sort="last.loss")] == ["one", "two", "three", "diverged"]
    assert [r["run_id"] for r in table.select(sort="last.loss", descending=True)][:3] == [
        "diverged",
        "three",
        "two",
    ]
    assert sorted(r["run_id"] for r in table.select(filter_text="last.loss > 1.5")) == ["three", "two"]
    assert main(["runs", f"--root={tmp_path}", "--sort", "last.loss", "-f", "loss > 1.5"]) == 0
    app = UiApp(tmp_path, limits=None)
    try:
        for query_text in ("", "sort=last.loss"):
            answer = app.respond("GET", "/api/runs_table", query_text)
            assert answer.status == 200
            json.loads(answer.body, parse_constant=lambda token: pytest.fail(f"{token} is not JSON"))
    finally:
        app.close()


# --- the exit status ----------------------------------------------------------------------------------------

EXITING = {
    "with": """\
import sys, layerlake
with layerlake.track(suite="toy", run_id="with-{code}", quiet=True) as run:
    run.log(0, loss=1.0)
    sys.exit({code})
""",
    "wandb": """\
import sys, layerlake
layerlake.init(project="toy", id="wandb-{code}", quiet=True)
layerlake.log({{"loss": 1.0}})
sys.exit({code})
""",
}


@pytest.mark.parametrize("way", sorted(EXITING))
def test_sys_exit_ends_the_run_with_the_scripts_exit_status(tmp_path, way):
    root = tmp_path / "warehouse"
    for code in (0, 1, None):
        done = python(EXITING[way].format(code=code), root)
        assert done.returncode == (1 if code else 0), done.stderr
    assert query(root, "select run_id, status, error from runs order by run_id") == [
        (f"{way}-0", "finished", None), (f"{way}-1", "failed", "SystemExit: 1"), (f"{way}-None", "finished", None),
    ]  # fmt: skip
    assert query(root, "select count(*) from scalars") == [(3,)]


# --- after the end ----------------------------------------------------------------------------------------------


def test_log_and_snapshot_after_the_end_raise_naming_the_run(tmp_path, fresh_session):
    model = tiny_models.neox(seed=0)
    with layerlake.track(
        model, suite="toy", run_id="ended", warehouse=tmp_path, probe=PROBE, quiet=True
    ) as run:
        run.log(0, loss=1.0)
        run.finish()
        with pytest.raises(RunFinishedError, match=r"log\(\) on run ended, which has finished"):
            run.log(1, loss=2.0)
        with pytest.raises(RunFinishedError, match=r"snapshot\(\) on run ended, which has finished"):
            run.snapshot(1, model, force=True)
    assert query(tmp_path, "select status from runs") == [("finished",)]  # the with's end changed nothing
    layerlake.init(project="toy", id="wandb-ended", dir=tmp_path, quiet=True)
    layerlake.finish()
    with pytest.raises(RunFinishedError, match=r"after layerlake.finish\(\): run wandb-ended has finished"):
        layerlake.log({"loss": 1.0})
    assert query(tmp_path, "select count(*) from scalars") == [(1,)]


# --- one snapshot per step --------------------------------------------------------------------------------------


def test_a_step_is_snapshotted_once_however_often_a_library_logs_it(tmp_path, fresh_session):
    model = tiny_models.neox(seed=0)
    layerlake.init(project="toy", id="dup", dir=tmp_path, quiet=True, compact=False)
    layerlake.watch(model, probe=PROBE, log_freq=4)
    for _ in range(5):
        layerlake.log({"loss": 1.0}, commit=False)  # W&B's idiom: several calls, one step
        layerlake.log({"lr": 0.1}, commit=False)
        layerlake.log({"grad_norm": 2.0})
    assert layerlake.run.snapshots == [0, 4]
    layerlake.finish()
    assert extract_commits(tmp_path) == [0, 4]


def test_lightning_snapshots_after_optimizer_steps_and_stores_a_metric_named_step(tmp_path):
    import lightning.pytorch as pl

    from layerlake.etl.integrations.lightning import LayerlakeCallback

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = tiny_models.neox(seed=0)

        def training_step(self, batch, batch_idx):
            loss = self.model(input_ids=batch, labels=batch).loss
            self.log("train_loss", loss)
            self.log("step", float(self.global_step))  # a name log()'s keywords once took for its own
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-2)

    callback = LayerlakeCallback(
        probe=PROBE,
        suite="toy",
        run_id="accumulated",
        warehouse=tmp_path,
        cadence=2,
        compact=False,
        quiet=True,
    )
    trainer = pl.Trainer(
        max_steps=4, accumulate_grad_batches=2, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
        callbacks=[callback],
    )  # fmt: skip
    batches = list(torch.randint(0, 40, (8, 4, 12), generator=torch.Generator().manual_seed(0)))
    trainer.fit(Module(), torch.utils.data.DataLoader(batches, batch_size=None))
    assert extract_commits(tmp_path) == [0, 2, 4]  # not [0, 0, 2, 2, 4] (mid-accumulation)
    assert query(tmp_path, "select status from runs") == [("finished",)]
    assert query(tmp_path, "select count(*) from scalars where name = 'step'")[0][0] > 0


# --- configs -------------------------------------------------------------------------------------------------------


def test_numpy_and_torch_config_values_are_stored_as_json_numbers(tmp_path):
    config = {
        "lr": np.float32(3e-3), "steps": np.int64(5), "scale": torch.tensor(2.0), "dtype": torch.bfloat16,
        "out": Path("/tmp"), "warmup": float("nan"), "clip": float("inf"), "betas": (0.9, 0.95),
    }  # fmt: skip
    with layerlake.track(suite="toy", run_id="cfg", warehouse=tmp_path, config=config, quiet=True):
        pass
    ((text,),) = query(tmp_path, "select config_json from runs")
    stored = json.loads(text, parse_constant=lambda token: pytest.fail(f"{token} is not JSON"))
    assert stored == {
        "lr": pytest.approx(3e-3), "steps": 5, "scale": 2.0, "dtype": "torch.bfloat16", "out": "/tmp",
        "warmup": "NaN", "clip": "Infinity", "betas": [0.9, 0.95],
    }  # fmt: skip
    con = layerlake.connect(tmp_path)
    try:  # `layerlake runs -f "config.lr > 1e-4"` keeps the run: its lr is a number
        assert [r["run_id"] for r in run_table.build(con).select(filter_text="config.lr > 1e-4")] == ["cfg"]
    finally:
        con.close()


# --- names and resuming --------------------------------------------------------------------------------------------


def test_wandb_display_names_become_safe_names_and_the_name_given_is_a_tag(tmp_path, fresh_session):
    run = layerlake.init(project="team/proj", name="lr=3e-3 bs=8", dir=tmp_path, quiet=True)
    run_id = run.run_id
    layerlake.finish()
    assert run_id.startswith("lr_3e-3_bs_8-")
    assert query(tmp_path, "select suite, model from runs") == [("team_proj", "lr_3e-3_bs_8")]
    assert query(tmp_path, "select key, value from run_tags") == [("name", "lr=3e-3 bs=8")]
    with pytest.raises(ConfigError, match="run 'missing' does not exist"):
        layerlake.init(project="toy", id="missing", resume="must", dir=tmp_path, quiet=True)
    assert layerlake.run is None and query(tmp_path, "select count(*) from runs") == [(1,)]
    layerlake.init(
        project="team/proj", name="lr=3e-3 bs=8", id=run_id, resume="must", dir=tmp_path, quiet=True
    )
    layerlake.finish()  # a run that exists is resumed
    assert layerlake.init(id=run_id, resume="must", dir=tmp_path, quiet=True).run.model == "lr_3e-3_bs_8"
    layerlake.finish()  # by its id alone, as W&B resumes: its own suite and model
    long = layerlake.init(project="toy", name="x" * 200, dir=tmp_path, quiet=True)  # its tag's task id fits
    layerlake.finish()
    assert query(tmp_path, f"select value from run_tags where run_id = '{long.run_id}'") == [("x" * 200,)]


def test_resuming_a_run_with_another_probe_is_refused_naming_both(tmp_path, capsys, fresh_session):
    from layerlake.etl.track import live_probe

    model = tiny_models.neox(seed=0)
    with layerlake.track(model, suite="toy", run_id="probed", warehouse=tmp_path, probe=PROBE, quiet=True):
        pass
    first, second = live_probe(PROBE).probe_id, live_probe(OTHER_PROBE).probe_id
    with pytest.raises(ConfigError, match=f"snapshots through probe {first}, not probe {second}"):
        layerlake.track(
            model, suite="toy", run_id="probed", warehouse=tmp_path, probe=OTHER_PROBE, resume=True
        )
    layerlake.init(project="toy", id="watched", dir=tmp_path)
    layerlake.watch(model, probe=PROBE, log_freq=4)
    layerlake.finish()
    err = capsys.readouterr().err
    assert (
        "scalars only" in err
        and f"run watched now snapshots GPTNeoXForCausalLM at every 4 steps through probe {first}" in err
    )
    with layerlake.track(
        model, suite="toy", run_id="snapped", warehouse=tmp_path, probe=PROBE, quiet=True
    ) as run:
        run.snapshot(0, model)
    layerlake.init(project="toy", id="snapped", resume=True, dir=tmp_path)  # W&B's way: its probe is stored
    with pytest.raises(ConfigError, match=f"through probe {first} already, not {second}"):
        layerlake.watch(model, probe=OTHER_PROBE, log_freq=4)
    layerlake.finish()


# --- the committing thread and the end of a run used without `with` ------------------------------------------


def test_a_name_utf8_cannot_hold_is_refused_and_a_failing_commit_leaves_the_thread_committing(tmp_path):
    run = layerlake.track(suite="toy", run_id="names", warehouse=tmp_path, quiet=True)
    with pytest.raises(ConfigError, match="is not text UTF-8 can encode"):
        run.log(0, {"bad\ud800name": 1.0})  # in a block it failed every later commit of that block
    run.log_values(0, {"bad\ud800name": 1.0, "loss": 2.0})  # a library's: left out, the rest kept
    real_commit = run._commit_scalars
    run._commit_scalars = lambda: (_ for _ in ()).throw(RuntimeError("disk gone"))  # one failing flush
    run.wait()
    run._commit_scalars = real_commit
    run.log(1, loss=3.0)
    run.finish()
    assert query(tmp_path, "select step, name, value from scalars order by step") == [
        (0, "loss", 2.0),
        (1, "loss", 3.0),
    ]
    assert any("disk gone" in f for f in run.failures)
    run.wait()  # after the end: returns at once (no thread is left to commit)


UNFINISHED_RUN = """\
import layerlake
run = layerlake.track(suite="toy", run_id="unfinished", quiet=True)  # no `with`, no finish()
for step in range(50):
    run.log(step, loss=float(step))
"""


def test_a_run_the_program_never_ends_is_ended_at_exit_with_its_numbers(tmp_path):
    root = tmp_path / "warehouse"
    done = python(UNFINISHED_RUN, root)
    assert done.returncode == 0, done.stderr
    assert query(root, "select count(*) from scalars") == [(50,)]
    assert query(root, "select status from runs") == [("finished",)]
