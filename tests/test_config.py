"""Every config composes and validates; a wrong key or type fails at compose time, naming the key."""

from __future__ import annotations

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
