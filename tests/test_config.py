"""Every config composes and validates; a wrong key or type fails at compose time, naming the key."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from layerlake.conf.compose import compose
from layerlake.conf.schema import CONF_DIR, GROUPS
from layerlake.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group,option",
    [(g, o) for g in GROUPS if g != "recipe" for o in group_options(g)],
)
def test_every_group_option_composes(group, option):
    settings = compose([f"{group}={option}"])
    assert getattr(settings, group) is not None


def test_the_pythia_suite_lists_the_study_schedule_and_models():
    suite = compose(["suite=pythia"]).suite
    assert len(suite.steps) == 154 and suite.steps[:4] == [0, 1, 2, 4] and suite.steps[-1] == 143000
    paper = suite.subsets["paper"]
    assert len(paper) == 27 and paper[11:14] == [1000, 3000, 13000] and paper[-1] == 143000
    names = {m.name for m in suite.models}
    for size in ("70m", "160m", "410m", "1.4b", "2.8b"):
        assert {f"pythia-{size}", f"pythia-{size}-deduped"} <= names
    assert suite.tokens_per_step == 2_097_152 == 1024 * 2048
    shapes = {m.name: (m.n_layers, m.d_model, m.n_heads) for m in suite.models}
    assert shapes["pythia-2.8b-deduped"] == (32, 2560, 32) and shapes["pythia-160m"] == (12, 768, 12)


def test_unknown_key_fails_naming_it_and_the_nearest_key():
    with pytest.raises(
        ConfigError, match=r"unknown config key 'probe.n_sequencez' \(did you mean 'probe.n_sequences'"
    ) as error:
        compose(["probe.n_sequencez=4"])
    assert "+probe" not in str(error.value)  # never Hydra's hint to append the misspelt key


def test_wrong_type_fails_naming_the_key():
    with pytest.raises(ConfigError, match="probe.n_sequences"):
        compose(["probe.n_sequences=many"])


def test_unknown_group_option_lists_the_options():
    with pytest.raises(
        ConfigError, match="suite=pythai is not a config of group 'suite' \\(did you mean 'pythia'"
    ):
        compose(["suite=pythai"])


@pytest.mark.parametrize("group", ["suite", "probe", "executor"])
def test_a_group_set_to_null_is_refused_naming_the_groups(group, capsys):
    from layerlake.cli.main import main

    with pytest.raises(ConfigError, match="a config group was set to null") as error:
        compose([f"{group}=null"])
    assert "suite" in error.value.fix and "probe" in error.value.fix
    assert main(["extract", f"{group}=null"]) == 2  # before anything is written or a worker starts
    assert "a config group was set to null" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override,key",
    [
        ("extract.sites=[]", "extract.sites=[]"),
        ("extract.estimators=[]", "extract.estimators=[]"),
        ("extract.kernels=[]", "extract.kernels=[]"),
        ("models=[]", "models=[]"),
        ("steps.only=[]", "steps.only=[]"),
    ],
)
def test_an_empty_list_that_would_choose_nothing_is_refused_naming_the_key(override, key):
    # extract.sites=[] once replaced a stored checkpoint's rows with none; models=[] extracted 0 checkpoints
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)} chooses no ") as error:
        compose([override])
    assert "list at least one" in error.value.fix


@pytest.mark.parametrize(
    "override,message",
    [
        ("suite.tokens_per_step=-1", "suite.tokens_per_step is -1: it must be at least 1"),
        ("executor.torch_threads=-2", "executor.torch_threads is -2: it must be at least 1"),
        ("suite.train.torch_threads=0", "suite.train.torch_threads is 0: it must be at least 1"),
        ("executor.max_retries=-1", "executor.max_retries is -1: it must be at least 0"),
        ("executor.num_gpus=-1", "executor.num_gpus is -1: it must be at least 0"),
        ("probe.n_sequences=0", "probe.n_sequences is 0: it must be at least 1"),
        ("suite.train.lr=0", "suite.train.lr is 0.0: it must be more than 0"),
        ("extract.near_zero_eps=nan", "extract.near_zero_eps is nan: it must be at least 0"),
        ("extract.batch_size=0", "extract.batch_size is 0: it must be at least 1"),
        ("suite.revisions.count=0", "suite.revisions.count is 0: it must be at least 1"),
        ("plot.ppi=0", "plot.ppi is 0: it must be at least 1"),
        ("steps.only=[0,-5]", "steps.only holds step -5: a step cannot be negative"),
        ("suite.steps=[-1,0]", "suite.steps holds step -1: a step cannot be negative"),
        ("suite.models=[{name:m,n_layers:0,d_model:8,n_heads:2}]", "suite.models[m].n_layers is 0"),
        # numpy's default_rng refused a negative seed with a traceback (probe.positions=sample)
        ("probe.seed=-1", "probe.seed is -1: it must be at least 0"),
        ("probe.seed=9223372036854775808", "probe.seed is 9223372036854775808: it must be at most"),
        # a million torch threads killed the process; the cap is fixed, so a Ray node's cores do not matter
        ("executor.torch_threads=1000000", "executor.torch_threads is 1000000: it must be at most 1,024"),
        ("suite.train.torch_threads=1025", "suite.train.torch_threads is 1025: it must be at most 1,024"),
        # a step of 2^62 overflowed int64 tokens_seen in its task; track() refuses steps past 10^12 alike
        (
            "suite.steps=[0,4611686018427387904]",
            "suite.steps holds step 4611686018427387904: past the largest",
        ),
        ("steps.only=[1000000000001]", "steps.only holds step 1000000000001: past the largest step"),
        ("suite.final_step=1000000000001", "suite.final_step is 1000000000001: it must be at most"),
        ("+suite.subsets.late=[1000000000001]", "suite.subsets.late holds step 1000000000001: past the"),
        (
            "suite.tokens_per_step=10000000000000000",
            "step 512 x suite.tokens_per_step 10000000000000000 is 5,120,000,000,000,000,000 tokens seen",
        ),
    ],
)
def test_a_number_out_of_its_range_is_refused_when_composed(override, message, capsys):
    from layerlake.cli.main import main

    with pytest.raises(ConfigError) as error:
        compose([override])
    assert message in error.value.message
    assert main(["suite", "show", override]) == 2  # the command line says the same, without a traceback
    err = capsys.readouterr().err
    assert message in err.replace("\n", " ") and "Traceback" not in err


def test_cli_prints_the_composed_config_and_refuses_a_bad_key():
    shown = subprocess.run(
        [sys.executable, "-m", "layerlake.cli", "extract", "--cfg", "job", "suite=pythia", "steps=paper"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert shown.returncode == 0 and "subset: paper" in shown.stdout and "name: pythia" in shown.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "layerlake.cli", "extract", "extract.sitez=[ov]"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert bad.returncode != 0 and "sitez" in bad.stderr


def test_extract_defaults_are_one_set():
    """The extraction options have one set of defaults: the schema's dataclass, the YAML the CLI composes
    and the plain ``ExtractOptions`` that the library, a tracked run and the tests build all agree."""
    import dataclasses

    from layerlake.conf.schema import ExtractConfig
    from layerlake.etl.task import ExtractOptions

    composed = compose([]).extract
    schema_defaults = ExtractConfig()
    options = ExtractOptions()
    for f in dataclasses.fields(ExtractConfig):
        from_schema, from_yaml = getattr(schema_defaults, f.name), getattr(composed, f.name)
        assert from_schema == from_yaml, (
            f"extract.{f.name}: {from_schema!r} in conf/schema.py, {from_yaml!r} in YAML"
        )
        if hasattr(options, f.name):
            want = tuple(from_schema) if isinstance(from_schema, list) else from_schema
            assert getattr(options, f.name) == want, f"ExtractOptions.{f.name} differs from extract.{f.name}"
    assert options.gradients is True


def test_the_step_bound_is_the_one_track_and_the_warehouse_use():
    from layerlake.core.limits import MAX_STEP
    from layerlake.warehouse import content

    assert content.MAX_STEP == MAX_STEP == 10**12
    compose([f"suite.steps=[0,{MAX_STEP}]", "suite.tokens_per_step=1"])  # the bound itself is a step
    with pytest.raises(ConfigError, match="past the largest step the warehouse stores"):
        compose([f"suite.steps=[0,{MAX_STEP + 1}]", "suite.tokens_per_step=1"])


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["extract.sites=[attn_out,mlp_out,attn_out]"], "extract.sites lists site 'attn_out' twice"),
        (["extract.kernels=[linear,linear]"], "extract.kernels lists kernel 'linear' twice"),
        (
            ["extract.estimators=[biased,debiased,biased]"],
            "extract.estimators lists estimator 'biased' twice",
        ),
        (["models=[embedded-s,embedded-m,embedded-s]"], "models lists model 'embedded-s' twice"),
        (
            [
                "suite.models=[{name:m,n_layers:1,d_model:8,n_heads:2},{name:m,n_layers:2,d_model:8,n_heads:2}]"
            ],
            "suite.models lists model 'm' twice",
        ),
        # a long plain list skips Hydra's grammar (conf/overrides.py): it is checked whole all the same
        ([f"models=[{','.join(f'm{i}' for i in range(80))},m7]"], "models lists model 'm7' twice"),
        (
            ["extract.sites=[" + ",".join(["ov", "attn_out"] * 40) + "]"],
            "extract.sites lists site 'ov' twice",
        ),
    ],
)
def test_a_value_listed_twice_is_refused_naming_the_key_and_the_value(overrides, message, capsys):
    # extract.sites=[attn_out,attn_out] stored every attn_out row twice: duplicate keys `check` then failed
    from layerlake.cli.main import main

    with pytest.raises(ConfigError) as error:
        compose(overrides)
    assert error.value.message.startswith(message) and "once" in error.value.fix
    assert main(["extract", "--cfg", "job", *overrides]) == 2
    err = capsys.readouterr().err
    assert message in err.replace("\n", " ") and "Traceback" not in err


def test_a_negative_step_inside_a_long_list_is_refused():
    # Hydra composes a long list with its first element only: the rest was never checked
    with pytest.raises(ConfigError, match="steps.only holds step -5: a step cannot be negative"):
        compose([f"steps.only=[{','.join(str(i) for i in range(80))},-5]"])


@pytest.mark.parametrize(
    "override,key,near",
    [
        ("+extract.batchsize=4", "extract.batchsize", "extract.batch_size"),
        ("+probe.n_sequencez=4", "probe.n_sequencez", "probe.n_sequences"),
        ("+suite.train.lrate=0.1", "suite.train.lrate", "suite.train.lr"),
        ("+executor.num_cpu=2", "executor.num_cpu", "executor.num_cpus"),
        ("+model=[a]", "model", "models"),
    ],
)
def test_a_key_added_with_plus_that_the_schema_lacks_is_refused(override, key, near):
    # `+extract.batchsize=4` composed, was kept as a stray attribute and silently ignored
    with pytest.raises(ConfigError) as error:
        compose([override])
    assert error.value.message.startswith(f"unknown config key {key!r} (did you mean {near!r}")
    assert key.rpartition(".")[0] + " takes: " in error.value.fix or "the top level takes" in error.value.fix


@pytest.mark.parametrize(
    "command",  # demo and suite build print their config (--cfg job): the same check, without the work
    [["extract"], ["suite", "show"], ["query", "stabilisation"], ["demo", "--cfg", "job"], ["suite", "build", "--cfg", "job"]],
)  # fmt: skip
def test_every_command_that_composes_refuses_a_key_added_with_plus(command, tmp_path, capsys):
    from layerlake.cli.main import main

    assert main([*command, f"paths.data={tmp_path}", "+extract.batchsize=4"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'extract.batchsize' (did you mean 'extract.batch_size'" in err
    assert "Traceback" not in err
    assert not any(tmp_path.iterdir())  # refused before anything is built, extracted or made


def test_keys_added_with_plus_where_any_name_is_a_key_still_compose():
    # a dict's keys (recipe parameters, suite subsets, a constructor's kwargs) and Hydra's own keys
    settings = compose(["+suite.subsets.mine=[0,4]", "+hydra.job.env_set.LAYERLAKE_X=1", "hydra.job.name=x"])
    assert settings.suite.subsets["mine"] == [0, 4]
