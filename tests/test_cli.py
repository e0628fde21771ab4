"""The command line a user meets: help for every command, Hydra's flags anywhere among the overrides,
the job named after the command with a log file that says what it did, option lists without internals,
and never Hydra's "append with +key" hint for a misspelt key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from layerlake.cli.main import main
from layerlake.conf.compose import compose
from layerlake.core.errors import ConfigError


def test_query_help_lists_the_recipes(capsys):
    assert main(["query", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: layerlake query <recipe>" in out
    assert "stabilisation" in out and "rank_trajectories" in out


def test_recipe_help_gives_each_parameter_its_type_default_and_doc(capsys):
    assert main(["query", "stabilisation", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "threshold double = 0.9 CKA a layer must keep" in out
    assert "reference_step integer? = null" in out
    assert "grain: one row per" in out


def test_unknown_recipe_help_names_the_recipes(capsys):
    assert main(["query", "stabilisaton", "--help"]) == 2
    assert "stabilisation" in capsys.readouterr().err


def test_suite_help_lists_its_commands(capsys):
    assert main(["suite", "--help"]) == 0
    out = capsys.readouterr().out
    assert "layerlake suite build" in out and "layerlake suite show" in out


@pytest.mark.parametrize(
    "args",
    [
        ["extract", "--cfg", "job", "probe.seq_len=5", "probe.n_sequences=3"],
        ["extract", "probe.seq_len=5", "--cfg", "job", "probe.n_sequences=3"],
        ["extract", "probe.seq_len=5", "probe.n_sequences=3", "--cfg=job"],
        ["extract", "probe.seq_len=5", "-c", "job", "probe.n_sequences=3"],
    ],
)
def test_cfg_job_works_wherever_it_stands(args, capsys):
    assert main(args) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert (shown["probe"]["seq_len"], shown["probe"]["n_sequences"]) == (5, 3)


@pytest.mark.parametrize("place", [0, 1, 2])
def test_cfg_job_after_a_recipe_is_not_taken_for_one(place, capsys):
    args = ["stabilisation", "threshold=0.8"]
    args[place:place] = ["--cfg", "job"]
    assert main(["query", *args]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["recipe"]["name"] == "stabilisation" and shown["recipe"]["params"]["threshold"] == 0.8


def test_conflicting_hydra_flags_are_a_clear_error(capsys):
    assert main(["extract", "--cfg", "job", "-m", "probe.seq_len=3,4"]) == 2
    err = capsys.readouterr().err
    assert "cannot be combined" in err and "fix:" in err and "Traceback" not in err


def test_the_job_is_named_after_the_command(capsys):
    assert main(["extract", "--cfg", "hydra"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["hydra"]["job"]["name"] == "extract"
    assert main(["suite", "show", "--cfg", "hydra"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["hydra"]["job"]["name"] == "suite-show"


def test_the_job_log_file_holds_the_commands_own_lines(tmp_path, capsys):
    metrics = tmp_path / "m.csv"
    metrics.write_text("model,step,layer,site,metric,value\nm,0,0,ov,cka,0.5\nm,10,0,ov,cka,1.0\n")
    root = tmp_path / "wh"
    args = ["--source", "s", "--suite", "s", "--root", str(root)]
    assert main(["import-metrics", str(metrics), *args]) == 0
    runs = tmp_path / "runs"
    overrides = [f"paths.warehouse={root}", f"paths.runs={runs}", "suite.name=s"]
    assert main(["query", "convergence", "source=s", *overrides]) == 0
    capsys.readouterr()
    (log,) = runs.glob("*/query.log")
    text = log.read_text()
    assert "recipe convergence with" in text and "rows; wrote" in text
    assert yaml.safe_load((log.parent / ".hydra/hydra.yaml").read_text())["hydra"]["job"]["name"] == "query"


def test_option_lists_do_not_show_the_schema_nodes(capsys):
    assert main(["extract", "--help"]) == 0
    out = capsys.readouterr().out
    groups = out.split("== Configuration groups ==")[1].split("== Config ==")[0]
    assert (
        "executor: local, ray" in groups
        and "suite: crfm-gpt2, embedded, olmo, olmo2, polypythias, pythia" in groups
    )
    assert "schema" not in groups
    assert main(["query", "stabilisation", "--hydra-help"]) == 0
    assert "schema" not in capsys.readouterr().out


def test_a_yaml_file_with_an_unknown_key_is_still_refused(tmp_path):
    (tmp_path / "executor").mkdir()
    (tmp_path / "executor" / "mine.yaml").write_text("kind: local\nnum_cpuz: 2\n")
    with pytest.raises(
        ConfigError, match=r"unknown config key 'executor.num_cpuz' \(set in executor/mine.yaml"
    ):
        compose([f"hydra.searchpath=[file://{tmp_path}]", "executor=mine"])
    (tmp_path / "executor" / "mine.yaml").write_text("kind: lokal\n")
    with pytest.raises(ConfigError, match="executor.kind 'lokal' is not one of: local, ray"):
        compose([f"hydra.searchpath=[file://{tmp_path}]", "executor=mine"])


@pytest.mark.parametrize(
    "args",
    [
        ["extract", "--help", "probe.n_sequencez=3"],
        ["extract", "--info", "probe.n_sequencez=3"],
        ["extract", "--cfg", "job", "probe.n_sequencez=3"],
        ["extract", "-m", "probe.n_sequencez=3,4"],
        ["query", "stabilisation", "--cfg", "job", "probe.n_sequencez=3"],
    ],
)
def test_a_misspelt_key_is_named_on_every_path_never_with_hydras_plus_hint(args, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'probe.n_sequencez' (did you mean 'probe.n_sequences'" in err
    assert "+probe" not in err and "Traceback" not in err


def test_a_misspelt_hydra_key_is_named(capsys):
    assert main(["extract", "--cfg", "job", "hydra.job.nmae=x"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'hydra.job.nmae' (did you mean 'hydra.job.name'" in err and "+hydra" not in err


def test_a_bad_value_in_a_later_job_of_a_sweep_fails_before_any_job_runs(tmp_path, capsys):
    assert main(["extract", "-m", "probe.seq_len=3,many", f"paths.data={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "probe.seq_len" in err and "many" in err and "Traceback" not in err
    assert not Path(tmp_path / "runs").exists()  # no job started


def test_a_command_run_in_process_puts_logging_back(tmp_path, capsys):
    # Hydra configures logging for its job (a handler on the stderr of that moment, one on the job's log
    # file): left in place, a later command or the caller's code logged into a closed stream ("--- Logging
    # error ---" in the next test's output) and into the finished job's file
    import logging

    from layerlake.cli.main import main

    root, ours = logging.getLogger(), logging.getLogger("layerlake.etl.progress")
    before = (list(root.handlers), root.level, ours.getEffectiveLevel())
    assert main(["suite", "show", f"paths.data={tmp_path}"]) == 0
    assert (list(root.handlers), root.level, ours.getEffectiveLevel()) == before
