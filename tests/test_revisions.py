"""A hub suite's checkpoints listed from each repo's refs (etl.revisions), on a real Hugging Face cache
laid out on disk with OLMo-style branch names (step<N>-tokens<M>B), offline."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from layerlake.conf.schema import ModelSpec, RevisionsConfig, StepsConfig
from layerlake.etl import revisions
from layerlake.etl.errors import SuiteError
from layerlake.etl.sources import open_source

REPO_ID = "tinyorg/tiny-olmo"
STEPS = [0, 1, 2, 4, 8, 16, 24, 32]
PATTERN = r"step(?P<step>\d+)-tokens\d+B"


def branch(step: int) -> str:
    return f"step{step}-tokens{step * 256 // 10**3}B"


@pytest.fixture
def olmo_cache(tiny_suite, tmp_path, monkeypatch) -> Path:
    """tiny-a's checkpoints as the hub cache keeps them: blobs, one snapshot per commit, one ref file
    per branch (OLMo's names), plus branches that are no checkpoint (main, a mid-training one)."""
    settings, root = tiny_suite
    cache = tmp_path / "hub"
    repo = cache / f"models--{REPO_ID.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    for step in STEPS:
        commit = hashlib.sha1(branch(step).encode()).hexdigest()
        snapshot = repo / "snapshots" / commit
        snapshot.mkdir(parents=True)
        files = [*sorted((root / settings.suite.name / "tiny-a" / f"step{step}").iterdir()),
                 root / settings.suite.name / "tokenizer.json"]  # fmt: skip
        for file in files:
            data = file.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            (snapshot / file.name).symlink_to(Path("../../blobs") / blob.name)
        (repo / "refs" / branch(step)).write_text(commit)
    (repo / "refs" / "main").write_text(hashlib.sha1(branch(32).encode()).hexdigest())
    (repo / "refs" / "stage2-ingredient1-step8-tokens2B").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def olmo_suite(tiny_suite, **rule):
    spec = ModelSpec(name="tiny-olmo", repo=REPO_ID, n_layers=1, d_model=32, n_heads=2, d_mlp=64)
    revs = RevisionsConfig(pattern=PATTERN, discover=True, **rule)
    return replace(tiny_suite[0].suite, name="tinyolmo", source="hf", models=[spec], steps=[], revisions=revs)


def test_checkpoints_are_listed_from_the_refs_by_the_pattern(tiny_suite, olmo_cache):
    refs = revisions.list_refs(REPO_ID, str(olmo_cache), local_only=True)
    assert "main" in refs and branch(8) in refs
    found = revisions.checkpoint_revisions(refs, PATTERN)
    assert found == {step: branch(step) for step in STEPS}  # not main, not the stage2 branch


def test_a_discovered_suite_plans_and_loads_its_revisions(tiny_suite, olmo_cache):
    settings, root = tiny_suite
    hub = open_source(olmo_suite(tiny_suite, schedule="every_kth", every=3), "/nonexistent")
    steps = hub.plan_steps("tiny-olmo", StepsConfig())
    assert steps == [0, 4, 24, 32]  # every 3rd of the listed steps, the last kept
    refs = hub.refs("tiny-olmo", steps)
    assert [r.revision for r in refs] == [branch(s) for s in steps]
    local = open_source(settings.suite, root)
    loaded = hub.load(refs[1])
    assert loaded.weights_sha256 == local.load(local.refs("tiny-a", [4])[0]).weights_sha256
    assert hub.plan_steps("tiny-olmo", StepsConfig(only=[16, 2])) == [2, 16]
    with pytest.raises(SuiteError, match="step 5, which tinyorg/tiny-olmo has no checkpoint of .*4, 8"):
        hub.plan_steps("tiny-olmo", StepsConfig(only=[5]))


def test_schedules_keep_the_first_and_last_and_space_the_rest(tiny_suite, olmo_cache):
    pythia = [0, *[2**i for i in range(10)], *range(1000, 143001, 1000)]
    log = revisions.pick(pythia, RevisionsConfig(schedule="log_spaced", count=12))
    assert log[0] == 0 and log[-1] == 143000 and 8 <= len(log) <= 13
    assert any(s < 100 for s in log) and any(1000 <= s < 10000 for s in log)  # every decade is seen
    assert revisions.pick(pythia, RevisionsConfig(schedule="all")) == pythia
    every = revisions.pick(pythia, RevisionsConfig(schedule="every_kth", every=50))
    assert every == [0, 40000, 90000, 140000, 143000]


def test_a_pattern_that_matches_nothing_names_the_repo_and_its_refs(tiny_suite, olmo_cache):
    hub = open_source(replace(olmo_suite(tiny_suite), revisions=RevisionsConfig(pattern=r"checkpoint-(?P<step>\d+)",
                                                                               discover=True)), "/x")  # fmt: skip
    with pytest.raises(
        SuiteError, match="no revision of tinyorg/tiny-olmo matches .*its refs: main"
    ) as error:
        hub.plan_steps("tiny-olmo", StepsConfig())
    assert "model card" in error.value.fix
    with pytest.raises(SuiteError, match="has no group named step"):
        revisions.checkpoint_revisions(["step1"], r"step\d+")
    with pytest.raises(SuiteError, match="is not a regular expression"):
        revisions.checkpoint_revisions(["step1"], r"step(?P<step>\d+")


@pytest.mark.parametrize("suite", ["polypythias", "olmo", "olmo2", "crfm-gpt2"])
def test_every_public_suite_config_composes_and_its_pattern_reads_its_naming(tmp_path, suite):
    from layerlake.conf.compose import compose

    settings = compose([f"paths.data={tmp_path}", f"suite={suite}"])
    example = {"polypythias": ["step143000"], "olmo": ["step20000-tokens84B"],
               "olmo2": ["stage1-step5000-tokens21B", "step150-tokens1B"],
               "crfm-gpt2": ["checkpoint-400000"]}[suite]  # fmt: skip
    refs = [*example, "main", "stage2-ingredient1-step11931-tokens50B"]
    found = revisions.checkpoint_revisions(refs, settings.suite.revisions.pattern)
    assert sorted(found.values()) == sorted(example) and settings.suite.revisions.discover
    assert all(m.repo for m in settings.suite.models)
