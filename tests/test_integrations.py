"""Each training library drives a tracked run through its own adapter: a few steps of a tiny model trained
by the real library (Lightning, Accelerate, a Hydra multirun), and the W&B-style module calls."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import layerlake

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models  # noqa: E402

PROBE = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]]


def batches(n: int, seed: int = 0) -> list[torch.Tensor]:
    return list(torch.randint(0, 40, (n, 4, 12), generator=torch.Generator().manual_seed(seed)))


def query(root: Path, sql: str) -> list[tuple]:
    con = layerlake.connect(root)
    try:
        return con.sql(sql).fetchall()
    finally:
        con.close()


# --- Lightning ---------------------------------------------------------------------------------------------


def test_lightning_callback_tracks_a_fit(tmp_path):
    import lightning.pytorch as pl

    from layerlake.etl.integrations.lightning import LayerlakeCallback

    class Module(pl.LightningModule):
        def __init__(self, lr: float) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.model = tiny_models.neox(seed=0)

        def training_step(self, batch, batch_idx):
            loss = self.model(input_ids=batch, labels=batch).loss
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)

    callback = LayerlakeCallback(probe=PROBE, suite="toy", run_id="pl", warehouse=tmp_path, cadence=[2])
    trainer = pl.Trainer(
        max_steps=5, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1, callbacks=[callback],
    )  # fmt: skip
    trainer.fit(Module(lr=1e-2), torch.utils.data.DataLoader(batches(8), batch_size=None))
    # before the first update, at the cadence's step, after the last
    assert query(tmp_path, "select list(step order by step) from checkpoints") == [([0, 2, 5],)]
    steps = query(tmp_path, "select list(step order by step) from scalars where name = 'train_loss'")
    assert steps == [([1, 2, 3, 4, 5],)]
    ((status, model, config),) = query(tmp_path, "select status, model, config_json from runs")
    assert (status, model) == ("finished", "GPTNeoXForCausalLM") and '"lr": 0.01' in config


def test_lightning_callback_names_the_model_it_cannot_find(tmp_path):
    import lightning.pytorch as pl

    from layerlake.core.errors import ConfigError
    from layerlake.etl.integrations.lightning import LayerlakeCallback

    class Two(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = tiny_models.neox(seed=0), tiny_models.neox(seed=1)

    with pytest.raises(ConfigError, match=r"2 models .*\['a', 'b'\]") as failure:
        LayerlakeCallback(probe=PROBE).tracked_model(Two())
    assert "module='model'" in failure.value.fix


# --- Accelerate --------------------------------------------------------------------------------------------


def test_accelerate_tracker_logs_and_snapshots(tmp_path):
    from accelerate import Accelerator

    from layerlake.etl.integrations.accelerate import LayerlakeTracker

    model = tiny_models.neox(seed=0).train()
    tracker = LayerlakeTracker(
        "acc", model=model, probe=PROBE, suite="toy", warehouse=tmp_path, cadence=[0, 2], quiet=True
    )
    accelerator = Accelerator(cpu=True, log_with=tracker)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.init_trackers("toy", config={"lr": 1e-2})
    for step, batch in enumerate(batches(4)):
        loss = model(input_ids=batch, labels=batch).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        accelerator.log({"loss": loss.item(), "note": "text is left out"}, step=step)
    accelerator.end_training()
    assert query(tmp_path, "select list(step order by step) from checkpoints") == [([0, 2, 3],)]
    assert query(tmp_path, "select list(step order by step) from scalars where name = 'loss'") == [
        ([0, 1, 2, 3],)
    ]
    assert query(tmp_path, "select run_id, status, config_json from runs") == [
        ("acc", "finished", '{"lr": 0.01}')
    ]


# --- Hydra ---------------------------------------------------------------------------------------------------

HYDRA_CONFIG = """\
lr: 0.1
fail: false
hydra:
  callbacks:
    layerlake:
      _target_: layerlake.etl.integrations.hydra.LayerlakeCallback
      suite: sweep
      model_name: mlp
      warehouse: {warehouse}
"""
HYDRA_TASK = """\
import hydra

@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg):
    if cfg.fail:
        raise RuntimeError("diverged")
    return {"val_loss": 1.0 - cfg.lr, "label": "not a number"}

main()
"""


def test_hydra_callback_records_every_job_of_a_multirun(tmp_path):
    """No layerlake code in the task function: the config's callback makes each job a run, with its
    overrides, job number, returned numbers and status (the failed job's exception)."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text(HYDRA_CONFIG.format(warehouse=tmp_path / "wh"))
    (tmp_path / "task.py").write_text(HYDRA_TASK)
    done = subprocess.run(
        [sys.executable, "task.py", "-m", "lr=0.1,0.2", f"hydra.sweep.dir={tmp_path / 'multirun'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    failed = subprocess.run(
        [sys.executable, "task.py", "-m", "fail=true", f"hydra.sweep.dir={tmp_path / 'failed'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert failed.returncode != 0 and "diverged" in failed.stderr
    runs = query(
        tmp_path / "wh",
        "select sweep_dir, job_num, overrides, status, error from runs order by sweep_dir, job_num",
    )
    assert [(r[1], r[2], r[3]) for r in runs] == [
        (0, ["fail=True"], "failed"), (0, ["lr=0.1"], "finished"), (1, ["lr=0.2"], "finished"),
    ]  # fmt: skip
    assert "diverged" in runs[0][4]
    values = query(
        tmp_path / "wh",
        "select r.job_num, s.name, s.value from scalars s join runs r using (run_id) order by r.job_num",
    )
    assert [(j, n) for j, n, _ in values] == [(0, "val_loss"), (1, "val_loss")]
    assert [v for *_, v in values] == pytest.approx([0.9, 0.8])


# --- the W&B-style calls -----------------------------------------------------------------------------------------


def test_wandb_style_calls_log_and_snapshot_at_due_steps(tmp_path, capsys):
    model = tiny_models.neox(seed=0).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    run = layerlake.init(
        project="toy", name="neox", config={"lr": 1e-2}, dir=tmp_path, entity="me", tags=["x"]
    )
    assert layerlake.run is run
    layerlake.watch(model, log="all", log_freq=2, probe=PROBE)
    for batch in batches(5):
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        layerlake.log({"loss": loss, "sample": "text"})  # W&B's step: 0, 1, 2 ...
    layerlake.finish()
    assert layerlake.run is None
    assert "'sample' is not a number" in capsys.readouterr().err
    ((run_id, suite, name, status, probe_id),) = query(
        tmp_path, "select run_id, suite, model, status, probe_id from runs"
    )
    assert (suite, name, status) == ("toy", "neox", "finished") and run_id.startswith("neox-") and probe_id
    assert query(tmp_path, "select list(step order by step) from checkpoints") == [([0, 2, 4],)]
    assert query(tmp_path, "select count(distinct step) from scalars where name = 'loss'") == [(5,)]
    assert query(tmp_path, "select count(*) from spectra where tensor = 'grad'")[0][0] > 0


def test_a_script_that_dies_leaves_its_wandb_style_run_failed(tmp_path):
    script = (
        "import layerlake\n"
        f"layerlake.init(project='toy', id='dies', dir={str(tmp_path)!r})\n"
        "layerlake.log({'loss': 1.0})\n"
        "raise SystemError('out of memory')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert query(tmp_path, "select status, error from runs") == [("failed", "SystemError: out of memory")]
    assert query(tmp_path, "select value from scalars") == [(1.0,)]


def test_wandb_style_calls_refuse_what_cannot_work(tmp_path, monkeypatch):
    from layerlake.core.errors import ConfigError
    from layerlake.etl import session

    monkeypatch.setattr(session, "_session", session._Session())  # as in a new process: no run yet
    layerlake.finish()  # nothing open: nothing to do
    with pytest.raises(ConfigError, match="before layerlake.init"):
        layerlake.log({"loss": 1.0})
    layerlake.init(project="toy", dir=tmp_path, quiet=True)
    try:
        with pytest.raises(ConfigError, match="needs the probe"):
            layerlake.watch(tiny_models.neox(seed=0))
        with pytest.raises(ConfigError, match="a run snapshots one"):
            layerlake.watch([tiny_models.neox(seed=0)] * 2, probe=PROBE)
    finally:
        layerlake.finish()
