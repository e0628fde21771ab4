"""The embedded suite: layout, architecture, learning, reuse, rebuild, resume after SIGKILL, errors."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from layerlake.cli.main import main as cli_main
from layerlake.conf.schema import TrainConfig
from layerlake.etl.errors import SuiteError
from layerlake.etl.sources import load_checkpoint, open_source
from layerlake.etl.suite import corpus
from layerlake.etl.suite.command import build, show, suite_table_rows
from layerlake.etl.suite.train import lr_at

REPO = Path(__file__).resolve().parents[1]
LAYERLAKE = str(REPO / ".venv" / "bin" / "layerlake")


def _suite_dir(tiny_suite) -> Path:
    settings, root = tiny_suite
    return root / settings.suite.name


def test_layout_is_hugging_face_folders_and_loss_log(tiny_suite):
    settings, _ = tiny_suite
    folder = _suite_dir(tiny_suite)
    for spec in settings.suite.models:
        for step in settings.suite.steps:
            names = {p.name for p in (folder / spec.name / f"step{step}").iterdir()}
            assert {"config.json", "model.safetensors"} <= names
        assert not list((folder / spec.name).glob(".tmp-*"))
        assert not (folder / spec.name / "_resume").exists()
        losses = pq.read_table(folder / spec.name / "loss.parquet").to_pydict()
        assert losses["step"] == list(range(1, settings.suite.train.max_steps + 1))
        assert losses["tokens_seen"] == [s * settings.suite.tokens_per_step for s in losses["step"]]
        assert losses["lr"] == pytest.approx([lr_at(s, settings.suite.train) for s in losses["step"]])
    record = json.loads((folder / "suite.json").read_text())
    assert all(record["models"][m.name]["complete"] for m in settings.suite.models)


def test_tokenizer_loads_with_transformers_and_round_trips(tiny_suite):
    from transformers import PreTrainedTokenizerFast

    settings, _ = tiny_suite
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(_suite_dir(tiny_suite) / "tokenizer.json"))
    assert len(tokenizer) == settings.suite.train.vocab_size
    text = "The assert statement: assert x, 'ünïcode'"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode())  # merges were learnt: fewer tokens than bytes


def test_architecture_is_pythia_scaled_down(tiny_suite):
    import torch

    settings, root = tiny_suite
    source = open_source(settings.suite, root)
    for spec in settings.suite.models:
        (ref,) = source.refs(spec.name, [settings.suite.steps[-1]])
        model = source.load(ref).model
        config = model.config
        assert config.use_parallel_residual is True
        assert config.tie_word_embeddings is False
        assert config.rope_parameters["partial_rotary_factor"] == 0.25
        assert (config.num_hidden_layers, config.hidden_size) == (spec.n_layers, spec.d_model)
        head = spec.d_model // spec.n_heads
        assert model.gpt_neox.layers[0].attention.rotary_ndims == head // 4
        # The rotary embedding really spans a quarter of the head: cos/sin have head/4 columns.
        cos, _ = model.gpt_neox.rotary_emb(torch.zeros(1, 5, spec.d_model), torch.arange(5)[None])
        assert cos.shape[-1] == head // 4
        assert (
            model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
        )


def test_loss_falls_for_every_model(tiny_suite):
    settings, _ = tiny_suite
    for spec in settings.suite.models:
        loss = pq.read_table(_suite_dir(tiny_suite) / spec.name / "loss.parquet").column("loss").to_pylist()
        assert loss[0] == pytest.approx(math.log(settings.suite.train.vocab_size), abs=0.3)  # uniform at init
        assert np.mean(loss[-4:]) < loss[0] - 1.0


def test_final_checkpoint_predicts_held_out_text_better_than_init(tiny_suite):
    """Independent of the training log: evaluate step 0 and the last step on held-out tokens."""
    import torch

    settings, root = tiny_suite
    ids = corpus.encode(_suite_dir(tiny_suite) / "tokenizer.json", corpus.held_out_text())[: 8 * 32]
    batch = torch.from_numpy(ids.reshape(8, 32))
    source = open_source(settings.suite, root)
    for spec in settings.suite.models:
        first, last = source.refs(spec.name, [0, settings.suite.steps[-1]])
        with torch.no_grad():
            before = load_checkpoint(first).model(input_ids=batch, labels=batch).loss.item()
            after = load_checkpoint(last).model(input_ids=batch, labels=batch).loss.item()
        assert after < before - 0.5


def test_every_checkpoint_loads_through_the_hub_loader_with_exact_weights(tiny_suite):
    from safetensors.torch import load_file

    settings, root = tiny_suite
    source = open_source(settings.suite, root)
    hashes = set()
    for spec in settings.suite.models:
        for ref in source.refs(spec.name, settings.suite.steps):
            loaded = source.load(ref)
            on_disk = load_file(Path(ref.location) / "model.safetensors")
            state = loaded.model.state_dict()
            # transformers 5 writes the output head under Pythia's on-disk name, `embed_out`
            state["embed_out.weight"] = state.pop("lm_head.weight")
            assert set(on_disk) == set(state)
            assert all(np.array_equal(on_disk[k].numpy(), state[k].numpy()) for k in on_disk)
            assert loaded.n_params == sum(t.numel() for t in on_disk.values())
            assert ref.tokens_seen == ref.step * settings.suite.tokens_per_step
            hashes.add(loaded.weights_sha256)
    assert len(hashes) == len(settings.suite.models) * len(settings.suite.steps)  # every update moved weights


def test_complete_suite_is_reused_not_rebuilt(tiny_suite, capsys):
    settings, _ = tiny_suite
    weights = sorted(_suite_dir(tiny_suite).glob("*/step*/model.safetensors"))
    before = {p: p.stat().st_mtime_ns for p in weights}
    assert build(settings) == 0
    out = capsys.readouterr().out
    assert all(f"{m.name}: reuse" in out for m in settings.suite.models)
    assert {p: p.stat().st_mtime_ns for p in weights} == before


def test_changed_model_config_rebuilds_only_that_model(tiny_suite, compose, tmp_path, capsys):
    settings, _ = tiny_suite
    data = tmp_path / "data"
    shutil.copytree(Path(settings.paths.data) / "suites", data / "suites")
    changed = compose(
        data,
        "suite.models=[{name:tiny-a,n_layers:1,d_model:32,n_heads:2,d_mlp:64},"
        "{name:tiny-b,n_layers:2,d_model:64,n_heads:4,d_mlp:96}]",
    )
    kept = data / "suites/embedded/tiny-a/step32/model.safetensors"
    mtime = kept.stat().st_mtime_ns
    assert build(changed) == 0
    out = capsys.readouterr().out
    assert "tiny-a: reuse" in out and "tiny-b: rebuild (its config changed" in out
    assert kept.stat().st_mtime_ns == mtime
    loaded = open_source(changed.suite, changed.paths.suites).refs("tiny-b", [32])[0]
    assert load_checkpoint(loaded).config.intermediate_size == 96


def _hashes(settings, suites: Path, model: str) -> dict[int, str]:
    source = open_source(settings.suite, suites)
    return {s: load_checkpoint(source.refs(model, [s])[0]).weights_sha256 for s in settings.suite.steps}


def test_a_corrupt_checkpoint_of_a_complete_model_is_repaired_in_place(tiny_suite, tmp_path, capsys):
    """The build says what it does (retrain from step 0 up to the damaged step only, keep the rest) and
    does exactly that; the weights equal the uninterrupted build's."""
    from dataclasses import replace

    settings, suites = tiny_suite
    data = tmp_path / "data"
    shutil.copytree(suites, data / "suites")
    folder = data / "suites/embedded/tiny-a"
    target = folder / "step8/model.safetensors"
    target.write_bytes(target.read_bytes()[:-100])
    kept = {
        p: p.stat().st_mtime_ns for p in [*folder.glob("step*/model.safetensors"), folder / "loss.parquet"]
    }
    del kept[target]
    moved = replace(settings, paths=replace(settings.paths, data=str(data), suites=str(data / "suites")))
    assert build(replace(moved, models=["tiny-a"])) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "tiny-a: repair (weights file" in out and "step8/model.safetensors is truncated" in out
    assert "retraining from step 0 to step 8 to rewrite it" in out and "the other checkpoints are kept" in out
    assert "tiny-a: rewrote step8, from step 0" in out
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # intact checkpoints and the loss log untouched
    assert not (folder / "_resume").exists()
    assert _hashes(moved, data / "suites", "tiny-a") == _hashes(settings, suites, "tiny-a")


@pytest.mark.slow  # the SIGKILL-resume mechanism runs in make test through test_resume_after_sigkill_gives_identical_weights
def test_an_interrupted_build_resumes_from_its_last_intact_checkpoint(tiny_suite, tiny_overrides, tmp_path):
    """Kill a real build, damage its newest checkpoint: the rerun says it resumes from the checkpoint
    before it, resumes there (not from step 0), and ends with the uninterrupted build's weights."""
    settings, root = tiny_suite
    args = [LAYERLAKE, "suite", "build", f"paths.data={tmp_path}", *tiny_overrides]
    folder = tmp_path / "suites/embedded/tiny-a"
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not (folder / "step16/model.safetensors").exists() and process.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert not (folder / "loss.parquet").exists()  # really interrupted
    saved = sorted(s for s in settings.suite.steps if (folder / f"step{s}/model.safetensors").exists())
    newest, before = saved[-1], saved[-2]
    weights = folder / f"step{newest}/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    rerun = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    out = " ".join(rerun.stdout.split())
    assert f"tiny-a: resume (interrupted; resuming from step {before}, its last intact checkpoint" in out
    assert f"step{newest}/model.safetensors is truncated" in out
    assert f"resumed at step {before}" in out
    assert _hashes(settings, tmp_path / "suites", "tiny-a") == _hashes(settings, root, "tiny-a")


def test_resume_after_sigkill_gives_identical_weights(tiny_suite, tiny_overrides, tmp_path):
    """Kill a real build mid-training, rerun it, and compare every weight with the uninterrupted build."""
    settings, root = tiny_suite
    args = [LAYERLAKE, "suite", "build", f"paths.data={tmp_path}", *tiny_overrides]
    marker = tmp_path / "suites/embedded/tiny-b/step4/model.safetensors"
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    assert marker.exists()
    assert not (tmp_path / "suites/embedded/tiny-b/loss.parquet").exists()  # really interrupted
    rerun = subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "tiny-a: reuse" in rerun.stdout and "tiny-b: resume" in rerun.stdout
    assert "resumed at step" in rerun.stdout
    resumed = open_source(settings.suite, tmp_path / "suites")
    original = open_source(settings.suite, root)
    for step in settings.suite.steps:
        (a,), (b,) = resumed.refs("tiny-b", [step]), original.refs("tiny-b", [step])
        assert load_checkpoint(a).weights_sha256 == load_checkpoint(b).weights_sha256, step
    log = "tiny-b/loss.parquet"
    assert pq.read_table(tmp_path / "suites/embedded" / log).equals(
        pq.read_table(_suite_dir(tiny_suite) / log)
    )


def test_hub_suite_is_not_built(tmp_path, compose):
    with pytest.raises(SuiteError, match="hub suites are downloaded when extracted"):
        build(compose(tmp_path, "suite=pythia"))


def test_cli_exits_2_with_a_clear_error(tmp_path, capsys):
    assert cli_main(["suite", "build", "suite=pythia", f"paths.data={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "hub suites" in err and "fix:" in err


def test_cli_unknown_model_names_the_models(tmp_path, capsys):
    assert cli_main(["suite", "build", f"paths.data={tmp_path}", "models=[nope]"]) == 2
    err = capsys.readouterr().err
    assert "no model 'nope'" in err and "embedded-s" in err


def test_cli_unknown_config_key_fails(tmp_path):
    result = subprocess.run(
        [LAYERLAKE, "suite", "build", f"paths.data={tmp_path}", "suite.train.bogus_key=1"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode != 0
    assert "bogus_key" in result.stderr
    assert not (tmp_path / "suites").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("suite.steps=[0,1,2,4,8]", "is not train.max_steps"),
        ("suite.tokens_per_step=1000", "tokens_per_step=1000"),
        ("suite.steps=[0,2,1,32]", "ascending"),
        ("suite.train.vocab_size=200", "no room for BPE merges"),
    ],
)
def test_bad_local_suite_config_is_refused_before_training(tmp_path, compose, override, message):
    with pytest.raises(SuiteError, match=message):
        build(compose(tmp_path, override))
    assert not (tmp_path / "suites").exists()


def test_show_and_table_rows(tiny_suite, capsys):
    settings, _ = tiny_suite
    rows = suite_table_rows(settings)
    assert [r["model"] for r in rows] == [m.name for m in settings.suite.models]
    for row in rows:
        loss = (
            pq.read_table(_suite_dir(tiny_suite) / row["model"] / "loss.parquet").column("loss").to_pylist()
        )
        assert (row["first_loss"], row["last_loss"]) == (loss[0], loss[-1])
        assert row["checkpoints"] == len(settings.suite.steps)
        assert row["parameters"] > 0
    assert show(settings) == 0
    out = capsys.readouterr().out
    assert "tiny-a" in out and str(rows[1]["parameters"]) in out


def test_lr_schedule_warms_up_then_decays_to_min_ratio():
    cfg = TrainConfig(lr=2.0, warmup_steps=4, max_steps=20, min_lr_ratio=0.25)
    lrs = [lr_at(t, cfg) for t in range(1, 21)]
    assert lrs[:4] == [0.5, 1.0, 1.5, 2.0]
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:], strict=False))
    assert lrs[-1] == pytest.approx(0.5)


@pytest.mark.slow
def test_default_suite_builds_and_learns(tmp_path):
    result = subprocess.run(
        [LAYERLAKE, "suite", "build", f"paths.data={tmp_path}", "progress=false"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    final = {}
    for folder in sorted((tmp_path / "suites/embedded").glob("embedded-*")):
        loss = pq.read_table(folder / "loss.parquet").column("loss").to_pylist()
        assert np.mean(loss[-20:]) < loss[0] - 2.0
        final[folder.name] = np.mean(loss[-50:])
    assert len(final) >= 3
