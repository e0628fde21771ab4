"""Tracking a live model: the rows equal the checkpoint path's, the training state is kept, failures are
recorded and never stop training, Hydra jobs record themselves, runs resume without duplicates."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import torch

import layerlake
from layerlake.core.errors import ConfigError, LayerlakeError
from layerlake.etl.driver import run_extract
from layerlake.etl.suite.command import build
from layerlake.etl.track import SCALAR_BLOCK, Cadence, training_state_kept
from layerlake.warehouse import schema
from layerlake.warehouse.writer import Warehouse

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models  # noqa: E402

# Columns that say where rows came from (the live model or a folder) and when: everything else must agree.
PROVENANCE = {"source", "location", "config_json", "task_id", "created_at"}
ROW_TABLES = ("checkpoints", "activation_stats", "sketches", "spectra")
PROBE = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]]  # token ids of a tiny model


def rows_by_key(root: Path, table: str) -> dict[tuple, dict]:
    """Every row of ``table`` under ``root``, by the table's key."""
    con = layerlake.connect(root)
    try:
        data = con.sql(f"select * from {table}").to_arrow_table().to_pylist()
    finally:
        con.close()
    return {tuple(row[c] for c in schema.TABLES[table].key): row for row in data}


def assert_close(live: object, stored: object, where: str) -> None:
    if isinstance(live, float) and isinstance(stored, float):
        if math.isnan(live) or math.isnan(stored):
            assert math.isnan(live) and math.isnan(stored), where
        else:
            assert live == pytest.approx(stored, rel=1e-4, abs=1e-6), where
    elif isinstance(live, list) and isinstance(stored, list):
        assert len(live) == len(stored), where
        for i, (a, b) in enumerate(zip(live, stored, strict=True)):
            assert_close(a, b, f"{where}[{i}]")
    else:
        assert live == stored, where


@pytest.fixture(scope="module")
def live_and_extracted(tmp_path_factory, compose):
    """The tiny suite trained with snapshots into warehouse ``live``; its checkpoints extracted into
    ``ckpt`` with the same probe and options."""
    data = tmp_path_factory.mktemp("track-data")
    live = compose(data, "suite.train.snapshots=true", f"paths.warehouse={data}/live")
    assert build(live) == 0
    checkpoints = compose(data, f"paths.warehouse={data}/ckpt", "executor=local")
    report = run_extract(checkpoints)
    assert not report.failed
    return data, live, compose


def test_live_rows_equal_the_rows_extracted_from_the_saved_checkpoints(live_and_extracted):
    data, settings, _ = live_and_extracted
    n_checkpoints = len(settings.suite.steps) * len(settings.suite.models)
    for table in ROW_TABLES:
        live, stored = rows_by_key(data / "live", table), rows_by_key(data / "ckpt", table)
        assert live.keys() == stored.keys(), table
        assert len({(k[0], row["step"]) for k, row in live.items()}) == n_checkpoints, table
        for key, row in live.items():
            for column, value in row.items():
                if column not in PROVENANCE:
                    assert_close(value, stored[key][column], f"{table} {key} {column}")
    # the same weights: the live model at step s is bit-identical to the checkpoint saved at step s
    live, stored = rows_by_key(data / "live", "checkpoints"), rows_by_key(data / "ckpt", "checkpoints")
    assert {k: r["weights_sha256"] for k, r in live.items()} == {
        k: r["weights_sha256"] for k, r in stored.items()
    }
    assert {r["source"] for r in live.values()} == {"live"}


def test_tracked_build_records_runs_and_scalars_and_extract_then_skips(live_and_extracted):
    data, settings, compose = live_and_extracted
    con = layerlake.connect(data / "live")
    runs = con.sql("select run_id, kind, status, seed, probe_id from runs order by run_id").fetchall()
    assert [(r[0], r[1], r[2], r[3]) for r in runs] == [
        (f"embedded.{m.name}", "train", "finished", settings.suite.train.seed) for m in settings.suite.models
    ]
    assert all(r[4] for r in runs)
    names = con.sql("select distinct name from scalars order by name").fetchall()
    assert [n for (n,) in names] == ["grad_norm", "loss", "lr", "tokens_seen"]
    steps = con.sql("select count(distinct step) from scalars").fetchall()[0][0]
    assert steps == settings.suite.train.max_steps
    con.close()
    # extracting the suite into the warehouse its live rows went to finds every checkpoint done
    report = run_extract(compose(data, f"paths.warehouse={data}/live", "executor=local"))
    assert report.skipped == report.planned > 0


def test_no_stored_row_holds_a_path_of_this_machine(live_and_extracted):
    data, _, _ = live_and_extracted
    for root in ("live", "ckpt"):
        con = layerlake.connect(data / root)
        for table in schema.TABLES:
            text = con.sql(f"select * from {table}").to_arrow_table()
            for column in text.column_names:
                if pa.types.is_string(text.schema.field(column).type):
                    values = [v for v in text.column(column).to_pylist() if v]
                    assert not any(str(data) in v for v in values), f"{root}: {table}.{column}"
        con.close()


# --- the live path on a model in a plain loop -----------------------------------------------------------------


def train_steps(model, optimizer, generator, steps, run=None, snapshot_between=False):
    """A few updates of a tiny model; with ``snapshot_between``, a snapshot after backward and before
    the optimizer step (when the gradients are accumulated and the optimizer still needs them)."""
    losses = []
    for step in steps:
        batch = torch.randint(0, 40, (4, 12), generator=generator)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        if run is not None and snapshot_between:
            run.snapshot(step, model)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if run is not None:
            run.log(step, loss=loss)
        losses.append(loss.item())
    return losses


def test_a_snapshot_keeps_the_training_state_so_training_is_bit_identical(tmp_path):
    """Two identical trainings, one with a snapshot at every step taken between backward and the
    optimizer step (with dropout on, so the RNG matters): the same losses and the same weights."""

    def trained(track: bool):
        torch.manual_seed(0)
        model = tiny_models.neox(seed=0)
        model.config.hidden_dropout = model.config.attention_dropout = 0.1
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.1
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        generator = torch.Generator().manual_seed(1)
        probe = torch.randint(0, 40, (4, 8), generator=torch.Generator().manual_seed(2))
        if not track:
            return train_steps(model, optimizer, generator, range(4)), model
        with layerlake.track(model, suite="toy", warehouse=tmp_path, probe=probe, cadence=1) as run:
            losses = train_steps(model, optimizer, generator, range(4), run, snapshot_between=True)
        assert run.snapshots == [0, 1, 2, 3] and run.failures == []
        return losses, model

    plain_losses, plain = trained(track=False)
    tracked_losses, tracked = trained(track=True)
    assert tracked_losses == plain_losses
    for (name, a), b in zip(plain.state_dict().items(), tracked.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_training_state_kept_restores_mode_grads_flags_and_rng():
    model = tiny_models.neox(seed=0).train()
    model.gpt_neox.layers[0].eval()
    batch = torch.randint(0, 40, (2, 6))
    model(input_ids=batch, labels=batch).loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    values = {n: p.grad.clone() for n, p in model.named_parameters()}
    frozen = next(model.parameters())
    frozen.requires_grad_(False)
    modes = {n: m.training for n, m in model.named_modules()}
    rng = torch.get_rng_state()
    with training_state_kept(model):
        model.eval()
        frozen.requires_grad_(True)
        model.zero_grad(set_to_none=True)
        model(input_ids=batch, labels=batch).loss.backward()  # new gradients in fresh tensors
        torch.rand(10)
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert frozen.requires_grad is False
    for name, p in model.named_parameters():
        assert p.grad is grads[name], f"{name}: the optimizer's tensor was replaced"
        assert torch.equal(p.grad, values[name]), name
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_failing_snapshot_is_recorded_and_training_goes_on(tmp_path, capsys):
    model = tiny_models.neox(seed=0).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with layerlake.track(model, suite="toy", run_id="bad", warehouse=tmp_path, probe=PROBE, cadence=1) as run:
        original = model.forward

        def broken(*args, **kwargs):
            if not model.training:  # snapshots run the probe in eval mode; training runs in train mode
                raise RuntimeError("out of memory (simulated by a broken forward)")
            return original(*args, **kwargs)

        model.forward = broken
        losses = train_steps(model, optimizer, torch.Generator().manual_seed(0), range(3), run, True)
        model.forward = original
        assert run.snapshot(3, model)  # recovers once the model works again
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    assert len(run.failures) == 3 and "out of memory" in run.failures[0]
    assert "training goes on" in capsys.readouterr().err
    con = layerlake.connect(tmp_path)
    assert con.sql("select status from runs").fetchall() == [("finished",)]
    assert con.sql("select list(step order by step) from checkpoints").fetchall() == [([3],)]
    failures = con.sql("select count(*) from failures where run_id = 'bad'").fetchall()[0][0]
    assert failures == 3
    assert con.sql("select count(distinct step) from scalars").fetchall() == [(3,)]


def test_cadence_forms():
    assert [s for s in range(200) if s in Cadence.parse(64)] == [0, 64, 128, 192]
    assert [s for s in range(600) if s in Cadence.parse(None)] == [0, 256, 512]  # the measured default
    assert [s for s in range(20) if s in Cadence.parse([3, 7])] == [3, 7]
    pythia = [s for s in range(2000) if s in Cadence.parse("pythia")]
    assert pythia[:11] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512] and pythia[-1] == 1000
    with pytest.raises(ConfigError, match="cadence"):
        Cadence.parse("sometimes")


def nudged(model):
    """The model after a stand-in for an update: other weights, so another weights_sha256."""
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    return model


def test_resuming_a_run_replaces_relogged_steps_and_adds_no_duplicate_rows(tmp_path):
    model = tiny_models.neox(seed=0)
    with layerlake.track(
        model, suite="toy", run_id="r", warehouse=tmp_path, probe=PROBE, cadence=[0, 2]
    ) as run:
        for step in range(SCALAR_BLOCK + 3):  # two scalar blocks
            run.log(step, loss=1.0)
        run.snapshot(0, nudged(model))
        run.snapshot(2, nudged(model))
    with pytest.raises(ConfigError, match="resume"):
        layerlake.track(model, suite="toy", run_id="r", warehouse=tmp_path, probe=PROBE)
    with layerlake.track(
        model, suite="toy", run_id="r", warehouse=tmp_path, probe=PROBE, cadence=[0, 2, 4], resume=True
    ) as run:
        for step in range(2, 6):  # the run died after step 1 and is replayed from its checkpoint at 2
            run.log(step, loss=2.0)
            run.snapshot(step, nudged(model))
    con = layerlake.connect(tmp_path)
    scalars = dict(con.sql("select step, value from scalars where run_id = 'r' order by step").fetchall())
    assert len(scalars) == SCALAR_BLOCK + 3
    assert [scalars[s] for s in range(6)] == [1.0, 1.0, 2.0, 2.0, 2.0, 2.0]
    assert con.sql("select list(step order by step) from checkpoints").fetchall() == [([0, 2, 4],)]
    assert con.sql("select count(*) from runs").fetchall() == [(1,)]
    assert Warehouse(tmp_path).committed()  # and `check` passes
    from layerlake.cli.main import main

    assert main(["check", f"--root={tmp_path}"]) == 0


def test_hydra_job_records_its_config_overrides_and_job_number(tmp_path):
    """A @hydra.main script run as a multirun: each job is a run with its overrides and job number."""
    import subprocess

    script = tmp_path / "train.py"
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text("lr: 0.1\nseed: 0\n")
    script.write_text(
        "import hydra, layerlake\n"
        "@hydra.main(version_base=None, config_path='conf', config_name='config')\n"
        "def main(cfg):\n"
        f"    with layerlake.track(suite='sweep', model_name='m', warehouse={str(tmp_path / 'wh')!r},"
        " seed=cfg.seed) as run:\n"
        "        run.log(0, loss=cfg.lr)\n"
        "main()\n"
    )
    done = subprocess.run(
        [sys.executable, str(script), "-m", "lr=0.1,0.2", f"hydra.sweep.dir={tmp_path / 'multirun'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    con = layerlake.connect(tmp_path / "wh")
    runs = con.sql(
        "select job_num, overrides, sweep_dir, config_json, status from runs order by job_num"
    ).fetchall()
    assert [(r[0], r[1], r[4]) for r in runs] == [(0, ["lr=0.1"], "finished"), (1, ["lr=0.2"], "finished")]
    assert all(r[2] == str(tmp_path / "multirun") for r in runs)
    assert '"lr": 0.2' in runs[1][3]
    losses = con.sql("select value from scalars join runs using (run_id) order by job_num").fetchall()
    assert losses == [(0.1,), (0.2,)]


def test_a_probe_that_cannot_work_fails_when_the_run_starts_and_stores_nothing(tmp_path):
    model = tiny_models.neox(seed=0)
    with pytest.raises(LayerlakeError, match="n >= 4 probe rows") as failure:
        layerlake.track(model, suite="toy", warehouse=tmp_path, probe=[[1, 2, 3]] * 3)
    assert "estimators=[biased]" in failure.value.fix
    assert not (tmp_path / "manifest.jsonl").exists() or not Warehouse(tmp_path).entries()


def test_trainer_callback_logs_the_trainers_numbers_and_snapshots(tmp_path):
    """A real ``transformers.Trainer`` with the callback: its logged loss lands in ``scalars``, and a
    snapshot at the first step, at each step of the cadence and at the last step in the row tables."""
    from transformers import Trainer, TrainingArguments

    model = tiny_models.neox(seed=0)
    generator = torch.Generator().manual_seed(0)
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 40, (24, 12), generator=generator)]
    args = TrainingArguments(
        output_dir=str(tmp_path / "trainer"), max_steps=6, per_device_train_batch_size=4, logging_steps=1,
        save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    with layerlake.track(
        model, suite="toy", run_id="hf", warehouse=tmp_path, probe=PROBE, cadence=[2, 4]
    ) as run:
        Trainer(model=model, args=args, train_dataset=data, callbacks=[run.trainer_callback()]).train()
    assert run.snapshots == [0, 2, 4, 6] and run.failures == []
    con = layerlake.connect(tmp_path)
    losses = con.sql("select step from scalars where name = 'loss' order by step").fetchall()
    assert [s for (s,) in losses] == [1, 2, 3, 4, 5, 6]
    assert con.sql("select list(distinct step order by step) from sketches").fetchall() == [([0, 2, 4, 6],)]
    assert con.sql("select status from runs").fetchall() == [("finished",)]


def test_suite_build_multirun_over_seeds_and_learning_rates_makes_one_run_per_job(tmp_path, tiny_overrides):
    """``suite build -m`` over two seeds and two learning rates: four jobs, four tracked runs, each with
    its overrides and job number, trained into its own folder."""
    from layerlake.cli.main import main

    overrides = [f"paths.data={tmp_path}", *tiny_overrides, "models=[tiny-a]", "suite.train.max_steps=8",
                 "suite.steps=[0,4,8]", "suite.subsets={paper:[0,8]}", "suite.train.snapshots=true"]  # fmt: skip
    assert (
        main(["suite", "build", "-m", *overrides, "suite.train.seed=1,2", "suite.train.lr=0.01,0.001"]) == 0
    )
    con = layerlake.connect(tmp_path / "warehouse")
    runs = con.sql("select run_id, job_num, seed, overrides, status from runs order by job_num").fetchall()
    assert [r[1] for r in runs] == [0, 1, 2, 3] and {r[4] for r in runs} == {"finished"}
    by_id = {r[0]: r for r in runs}
    for seed in (1, 2):
        for lr in ("0.01", "0.001"):
            run = by_id[f"embedded.tiny-a.seed{seed}-lr{lr}"]
            assert run[2] == seed
            assert f"suite.train.seed={seed}" in run[3] and f"suite.train.lr={lr}" in run[3]
    folders = sorted(p.name for p in (tmp_path / "suites" / "embedded").iterdir() if p.is_dir())
    assert folders == [f"tiny-a@seed{s}-lr{lr}" for s in (1, 2) for lr in ("0.001", "0.01")]
    steps = con.sql("select run_id, list(step order by step) from checkpoints group by run_id").fetchall()
    assert len(steps) == 4 and all(s == [0, 4, 8] for _, s in steps)
    assert main(["check", f"--root={tmp_path / 'warehouse'}"]) == 0


def test_the_plain_loop_hook_logs_and_snapshots_at_the_cadence(tmp_path):
    model = tiny_models.neox(seed=0).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    with layerlake.track(
        model, suite="toy", run_id="h", warehouse=tmp_path, probe=PROBE, cadence="pythia"
    ) as run:
        after_step = run.hook(model)
        for step in range(6):
            batch = torch.randint(0, 40, (4, 12), generator=generator)
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            after_step(step, {"loss": loss.item(), "lr": 1e-3})
    assert run.snapshots == [0, 1, 2, 4]
    con = layerlake.connect(tmp_path)
    assert con.sql("select count(*) from scalars").fetchall() == [(12,)]


def test_a_single_hydra_run_records_where_and_from_which_code_it_ran(tmp_path):
    """A @hydra.main script run once (no -m) from a git checkout with uncommitted changes: its run
    holds its overrides, no job number or sweep folder, this host, the checkout's commit and the dirty
    flag, and start and end times around the call."""
    import subprocess
    from datetime import datetime, timezone

    from layerlake.core.provenance import host

    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "config.yaml").write_text("lr: 0.1\nseed: 3\n")
    (tmp_path / "train.py").write_text(
        "import hydra, layerlake\n"
        "@hydra.main(version_base=None, config_path='conf', config_name='config')\n"
        "def main(cfg):\n"
        f"    with layerlake.track(suite='one', model_name='m', warehouse={str(tmp_path / 'wh')!r},"
        " seed=cfg.seed) as run:\n"
        "        run.log(0, loss=cfg.lr)\n"
        "main()\n"
    )
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(tmp_path)]
    for args in (["init", "-q"], ["add", "train.py", "conf"], ["commit", "-qm", "train"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    (tmp_path / "conf" / "config.yaml").write_text("lr: 0.1\nseed: 3\n# changed\n")  # uncommitted
    before = datetime.now(timezone.utc)
    done = subprocess.run(
        [sys.executable, "train.py", "lr=0.3", f"hydra.run.dir={tmp_path / 'out'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    after = datetime.now(timezone.utc)
    assert done.returncode == 0, done.stderr
    con = layerlake.connect(tmp_path / "wh")
    (run,) = con.sql("select * from runs").to_arrow_table().to_pylist()
    assert (run["status"], run["seed"], run["overrides"], run["job_num"], run["sweep_dir"]) == (
        "finished", 3, ["lr=0.3"], None, None,
    )  # fmt: skip
    assert '"lr": 0.3' in run["config_json"]
    assert (run["host"], run["git_commit"], run["git_dirty"]) == (host(), commit, True)
    assert run["pid"] is not None and run["pid"] != __import__("os").getpid()
    assert before <= run["started_at"] <= run["ended_at"] <= after


def test_snapshots_are_committed_off_the_training_thread(tmp_path, monkeypatch):
    import threading

    committed_on = []
    original = Warehouse.publish

    def publish(self, commits):
        if any(e is not None and e.meta.get("kind") == "extract" for e, _ in commits):  # a snapshot's rows
            committed_on.append(threading.get_ident())
        return original(self, commits)

    monkeypatch.setattr(Warehouse, "publish", publish)
    model = tiny_models.neox(seed=0)
    with layerlake.track(
        model, suite="toy", run_id="bg", warehouse=tmp_path, probe=PROBE, cadence=[0, 1]
    ) as run:
        for step in range(2):
            run.snapshot(step, model)
    assert run.snapshots == [0, 1] and len(committed_on) == 2
    assert threading.get_ident() not in committed_on


def test_a_run_says_where_it_goes_when_it_starts_and_what_it_took_when_it_ends(tmp_path, capsys):
    """One line on stderr as the run starts (its id, suite/model, cadence, warehouse) and one as it ends
    (its status, how many snapshots and failures); ``quiet=True`` prints neither."""
    model = tiny_models.neox(seed=0)
    with layerlake.track(
        model, suite="toy", model_name="neox", run_id="said", warehouse=tmp_path, probe=PROBE, cadence=[0, 2]
    ) as run:
        for step in range(3):
            run.snapshot(step, model)
    start, end = capsys.readouterr().err.strip().splitlines()
    assert start.startswith("layerlake: run said started (toy/neox)") and str(tmp_path) in start, start
    assert end == f"layerlake: run said finished: 2 snapshot(s), 0 failure(s), in {tmp_path}", end
    with layerlake.track(model, suite="toy", run_id="quiet", warehouse=tmp_path, probe=PROBE, quiet=True):
        pass
    assert capsys.readouterr().err == ""
