"""Integration: the real extraction pipeline on a tiny embedded suite (real models, Parquet, DuckDB)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from layerlake import warehouse
from layerlake.etl.driver import run_extract
from layerlake.etl.plan import make_plan
from layerlake.warehouse.writer import Warehouse

ROOT = Path(__file__).resolve().parents[1]


def with_paths(settings, data: Path, suites: Path | None = None):
    paths = dataclasses.replace(
        settings.paths,
        data=str(data),
        warehouse=str(data / "warehouse"),
        runs=str(data / "runs"),
        suites=str(suites or settings.paths.suites),
    )
    return dataclasses.replace(settings, paths=paths, progress=False)


def copy_suite(settings, dest: Path) -> Path:
    src = Path(settings.paths.suites) / settings.suite.name
    shutil.copytree(src, dest / settings.suite.name)
    return dest


def committed_files(root: Path) -> set[str]:
    """Every file an ok entry ever listed (batch lines too: a run starts with its row and its probe's)."""
    from layerlake.warehouse.manifest import read_entries

    return {
        f.path
        for e in read_entries(root / "_manifest" / "commits.jsonl")
        if e.status == "ok"
        for f in e.files
    }


def test_extract_commits_every_task_once_and_rerun_skips(tiny_suite, tmp_path):
    settings, _ = tiny_suite
    settings = with_paths(settings, tmp_path)
    plan = make_plan(settings)
    report = run_extract(settings)
    assert report.ok, report.failed
    assert len(report.committed) == len(plan.tasks)

    again = run_extract(settings)
    assert again.committed == [] and again.skipped == len(plan.tasks)

    con = warehouse.connect(settings.paths.warehouse)
    rows = con.sql("select model, step, count(*) from checkpoints group by all").fetchall()
    assert len(rows) == len(plan.tasks) and all(count == 1 for *_, count in rows)
    sites = {s for (s,) in con.sql("select distinct site from activation_stats").fetchall()}
    assert set(settings.extract.sites) <= sites


def test_corrupt_checkpoint_fails_alone_and_rerun_retries_only_it(tiny_suite, tmp_path):
    settings, _ = tiny_suite
    suites = copy_suite(settings, tmp_path / "suites")
    settings = with_paths(settings, tmp_path / "data", suites)
    plan = make_plan(settings)
    bad = plan.tasks[len(plan.tasks) // 2].ref
    weights = Path(bad.location) / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[: len(original) // 3])

    report = run_extract(settings)
    assert [label for label, _ in report.failed] == [f"{bad.model} {bad.revision}"]
    assert "model.safetensors" in report.failed[0][1]
    assert len(report.committed) == len(plan.tasks) - 1

    weights.write_bytes(original)
    retry = run_extract(settings)
    assert retry.ok and retry.committed == [f"{bad.model} {bad.revision}"]


def test_cli_exit_code_names_the_corrupt_checkpoint(tiny_suite, tmp_path):
    settings, _ = tiny_suite
    suites = copy_suite(settings, tmp_path / "suites")
    settings = with_paths(settings, tmp_path / "data", suites)
    bad = make_plan(settings).tasks[0].ref
    (Path(bad.location) / "model.safetensors").write_bytes(b"not a safetensors file")
    proc = run_cli(settings, "extract")
    assert proc.returncode != 0
    assert bad.revision in proc.stderr and bad.model in proc.stderr


def run_cli(settings, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "layerlake.cli", *args, *cli_overrides(settings)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        **kwargs,
    )


def cli_overrides(settings) -> list[str]:
    """The overrides that reproduce the tiny suite's settings on the command line."""
    return [
        f"paths.data={settings.paths.data}",
        f"paths.suites={settings.paths.suites}",
        *settings_overrides(settings),
        "progress=false",
    ]


def settings_overrides(settings) -> list[str]:
    from conftest import TINY_OVERRIDES  # pytest puts tests/ on sys.path

    return list(TINY_OVERRIDES)


def test_sigkill_mid_run_then_rerun_leaves_exactly_one_set_of_rows(tiny_suite, tmp_path):
    settings, _ = tiny_suite
    settings = with_paths(settings, tmp_path)
    n_tasks = len(make_plan(settings).tasks)
    manifest = tmp_path / "warehouse" / "_manifest" / "commits.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "layerlake.cli", "extract", *cli_overrides(settings)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if manifest.exists() and sum(1 for _ in manifest.open()) >= 3:  # probe rows + a task or two
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    rerun = run_cli(settings, "extract")
    assert rerun.returncode == 0, rerun.stderr
    con = warehouse.connect(settings.paths.warehouse)
    per_task = con.sql("select task_id, count(*) from checkpoints group by all").fetchall()
    assert len(per_task) == n_tasks and all(c == 1 for _, c in per_task)
    keys = con.sql(
        "select model, step, layer, site, head, count(*) c from activation_stats group by all having c > 1"
    ).fetchall()
    assert keys == []
    root = tmp_path / "warehouse"
    on_disk = {
        p.relative_to(root).as_posix()
        for p in root.rglob("*.parquet")
        if not p.relative_to(root).parts[0].startswith("_")
    }
    assert on_disk == committed_files(root)


@pytest.mark.ray
@pytest.mark.slow  # a Ray cluster with declared GPUs: make test-slow (make test runs a Ray extraction)
def test_ray_executor_gives_each_gpu_task_its_own_device(tiny_suite, tmp_path):
    import ray

    from layerlake.etl.executors import RayExecutor

    settings, _ = tiny_suite
    settings = with_paths(settings, tmp_path)
    tasks = make_plan(settings).tasks[:2]
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False)
    try:
        config = dataclasses.replace(settings.executor, kind="ray", num_gpus=2)
        outcomes = list(RayExecutor(config).run(tasks))
    finally:
        ray.shutdown()
    assert all(o.result is not None for o in outcomes), [o.error for o in outcomes]
    gpu_ids = [tuple(o.result.placement["gpu_ids"]) for o in outcomes]
    assert all(len(ids) == 1 for ids in gpu_ids)
    assert len(set(gpu_ids)) == 2


@pytest.mark.ray
def test_ray_extract_matches_local_extract(tiny_suite, tmp_path):
    settings, _ = tiny_suite
    local = with_paths(settings, tmp_path / "local")
    on_ray = with_paths(settings, tmp_path / "ray")
    on_ray = dataclasses.replace(
        on_ray, executor=dataclasses.replace(on_ray.executor, kind="ray", num_cpus=2)
    )
    assert run_extract(local).ok and run_extract(on_ray).ok
    query = "select model, step, layer, site, head, rms, sv from activation_stats order by all"
    a = warehouse.connect(local.paths.warehouse).sql(query).fetchall()
    b = warehouse.connect(on_ray.paths.warehouse).sql(query).fetchall()
    assert len(a) == len(b) > 0
    for row_a, row_b in zip(a, b, strict=True):
        assert row_a[:5] == row_b[:5]
        assert row_a[5] == pytest.approx(row_b[5], rel=1e-6)


def test_a_wrong_option_fails_before_any_task_runs_or_is_recorded(tiny_suite, tmp_path):
    from layerlake.core.errors import ConfigError

    settings, _ = tiny_suite
    settings = with_paths(settings, tmp_path)
    settings = dataclasses.replace(settings, extract=dataclasses.replace(settings.extract, sites=["bogus"]))
    with pytest.raises(ConfigError, match="extract.sites 'bogus'"):
        run_extract(settings)
    assert not (tmp_path / "warehouse" / "_manifest" / "commits.jsonl").exists()


def test_extracting_again_with_other_options_replaces_the_rows(tiny_suite, tmp_path, capsys):
    settings, _ = tiny_suite
    settings = with_paths(settings, tmp_path)
    settings = dataclasses.replace(settings, steps=dataclasses.replace(settings.steps, only=[0, 32]))
    without = dataclasses.replace(settings, extract=dataclasses.replace(settings.extract, gradients=False))
    with_grads = dataclasses.replace(settings, extract=dataclasses.replace(settings.extract, gradients=True))
    first = run_extract(without)
    assert first.ok and first.replaced == 0
    assert "replaces" not in capsys.readouterr().err
    stored = [
        e for e in Warehouse(settings.paths.warehouse).committed().values() if e.meta.get("kind") == "extract"
    ]
    rows = sum(f.rows for e in stored for f in e.files)
    second = run_extract(with_grads)
    assert second.ok and second.replaced == len(first.committed) and second.skipped == 0
    said = " ".join(capsys.readouterr().err.split())  # said before the first replacement commits
    assert f"{len(stored)} checkpoint(s) were extracted before with other extraction options" in said
    assert f"replaces their {rows:,} stored rows (activation_stats " in said

    con = warehouse.connect(settings.paths.warehouse)
    assert con.sql("select count(*) from spectra where tensor = 'grad'").fetchall()[0][0] > 0
    per_checkpoint = con.sql("select model, step, count(*) from checkpoints group by all").fetchall()
    assert all(count == 1 for *_, count in per_checkpoint)
    twice = con.sql(
        "select model, step, layer, site, head, count(*) c from activation_stats group by all having c > 1"
    ).fetchall()
    assert twice == []


@pytest.mark.ray
@pytest.mark.slow  # a second Ray cluster started for the test: make test-slow
def test_ray_executor_joins_an_existing_cluster_by_address(tiny_suite, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from layerlake.etl.executors import RayExecutor

    settings, _ = tiny_suite
    settings = with_paths(settings, tmp_path)
    tasks = make_plan(settings).tasks[:2]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        config = dataclasses.replace(settings.executor, kind="ray", address=cluster.address)
        executor = RayExecutor(config)
        outcomes = list(executor.run(tasks))
        assert ray.get_runtime_context().gcs_address == cluster.address
        executor.close()
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert [o.error for o in outcomes] == [None, None]


def test_cli_names_a_missing_checkpoint_folder_and_exits_non_zero(tiny_suite, tmp_path):
    settings, _ = tiny_suite
    suites = copy_suite(settings, tmp_path / "suites")
    settings = with_paths(settings, tmp_path / "data", suites)
    gone = make_plan(settings).tasks[-1].ref
    shutil.rmtree(gone.location)
    proc = run_cli(settings, "extract")
    assert proc.returncode != 0
    assert gone.revision in proc.stderr and "fix:" in proc.stderr


def rewrite_weights(location: str, change) -> None:
    """The checkpoint's model.safetensors with ``change(tensors)`` applied (a dict of name -> tensor)."""
    from safetensors.torch import load_file, save_file

    path = Path(location) / "model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_a_checkpoint_with_an_all_zero_matrix_is_extracted_with_the_others(tiny_suite, tmp_path):
    # a zero-initialised output projection at step 0: Hoyer sparsity is NULL, the run finishes
    settings, _ = tiny_suite
    suites = copy_suite(settings, tmp_path / "suites")
    settings = with_paths(settings, tmp_path / "data", suites)
    plan = make_plan(settings)
    first = next(t.ref for t in plan.tasks if t.ref.model == "tiny-a")
    rewrite_weights(first.location, lambda t: t["gpt_neox.layers.0.attention.dense.weight"].zero_())
    report = run_extract(settings)
    assert report.ok, report.failed
    assert len(report.committed) == len(plan.tasks)
    con = warehouse.connect(settings.paths.warehouse)
    nulls = con.sql(
        "select tensor, matrix from matrix_stats where hoyer is null and model = 'tiny-a' and step = ? order by 1",
        params=[first.step],
    ).fetchall()
    assert ("weight", "dense") in nulls
    assert con.sql("select distinct status from runs").fetchall() == [("finished",)]


def test_a_checkpoint_of_another_shape_under_a_model_fails_alone_naming_both_shapes(tiny_suite, tmp_path):
    # tiny-b's weights (2 layers, width 64, 4 heads) in one of tiny-a's step folders (1 layer, 32, 2)
    settings, _ = tiny_suite
    suites = copy_suite(settings, tmp_path / "suites")
    settings = with_paths(settings, tmp_path / "data", suites)
    plan = make_plan(settings)
    a = [t.ref for t in plan.tasks if t.ref.model == "tiny-a"]
    b = next(t.ref for t in plan.tasks if t.ref.model == "tiny-b" and t.ref.step == a[-1].step)
    shutil.rmtree(a[-1].location)
    shutil.copytree(b.location, a[-1].location)
    report = run_extract(settings)
    assert [label for label, _ in report.failed] == [f"tiny-a {a[-1].revision}"]
    assert "n_layers 2, not 1; d_model 64, not 32; n_heads 4, not 2" in report.failed[0][1]
    assert len(report.committed) == len(plan.tasks) - 1
    con = warehouse.connect(settings.paths.warehouse)
    assert con.sql(
        "select count(*) from checkpoints where model = 'tiny-a' and d_model <> 32"
    ).fetchall() == [(0,)]


def test_extracting_into_an_archived_run_is_refused_until_it_is_restored(tiny_suite, tmp_path, capsys):
    """`extract` into an archived run counted its hidden checkpoints as committed (skipped) and committed
    the new step shown, with no run row shown: refused before any task runs, naming the run and both
    fixes. The suite's own runs (tracked while it trained) are the ones its checkpoints' rows join."""
    from layerlake.cli.main import main
    from layerlake.etl.task import extract_run_id
    from layerlake.warehouse.errors import WarehouseError

    settings, _ = tiny_suite
    data = tmp_path / "data"
    shutil.copytree(settings.paths.warehouse, data / "warehouse")  # the suite's runs, as built
    settings = with_paths(settings, data)
    first = dataclasses.replace(settings, steps=dataclasses.replace(settings.steps, only=[0, 4]))
    more = dataclasses.replace(settings, steps=dataclasses.replace(settings.steps, only=[0, 4, 8]))
    assert run_extract(first).ok
    root = Path(settings.paths.warehouse)
    run_id = extract_run_id(settings.suite.name, "tiny-b")
    assert main(["runs", "archive", run_id, "--root", str(root)]) == 0
    lines = (root / "_manifest" / "commits.jsonl").read_bytes()
    with pytest.raises(
        WarehouseError, match=f"run {run_id} is archived .* cannot extract into it"
    ) as refused:
        run_extract(more)
    assert f"layerlake runs restore {run_id} --root {root}" in refused.value.fix
    assert "leave its model out" in refused.value.fix
    assert (root / "_manifest" / "commits.jsonl").read_bytes() == lines
    assert main(["runs", "restore", run_id, "--root", str(root)]) == 0
    assert run_extract(more).ok
    con = warehouse.connect(root)
    steps = con.sql("select model, step from checkpoints group by all order by all").fetchall()
    con.close()
    assert steps == [(model, step) for model in ("tiny-a", "tiny-b") for step in (0, 4, 8)]
