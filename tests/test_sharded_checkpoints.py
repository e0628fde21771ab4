"""Sharded safetensors checkpoints: an index (``model.safetensors.index.json``) and the shards it lists, as
``save_pretrained`` writes a model larger than ``max_shard_size`` (Pythia 1.4b and up on the hub).

A sharded checkpoint loads, from a local folder and from the hub cache, with the ``weights_sha256`` and the
rows of the same weights stored whole; its fingerprint covers the index, every shard and config.json.
Hostile shards and indexes each fail their task with a ``CheckpointError`` naming the file and the fix.
Every checkpoint here is the tiny suite's tiny-a, saved again with a small ``max_shard_size``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from safetensors.numpy import load_file, save_file

from layerlake import warehouse
from layerlake.conf.schema import ModelSpec
from layerlake.etl.driver import run_extract
from layerlake.etl.errors import CheckpointError
from layerlake.etl.sources import checkpoint_fingerprint, load_checkpoint, open_source
from layerlake.warehouse.writer import Warehouse

INDEX = "model.safetensors.index.json"
STEP = 8


def shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("model-*-of-*.safetensors"))


def shard_in_place(folder: Path, max_shard_size: str = "32KB") -> None:
    """Store ``folder``'s weights sharded instead of whole: save_pretrained's index and shards, the folder's
    own config.json kept (only the weights' layout changes)."""
    from transformers import AutoModelForCausalLM

    staging = folder.parent / f".{folder.name}-sharded"
    AutoModelForCausalLM.from_pretrained(folder).save_pretrained(staging, max_shard_size=max_shard_size)
    (folder / "model.safetensors").unlink()
    for file in [staging / INDEX, *shards(staging)]:
        shutil.move(file, folder / file.name)
    shutil.rmtree(staging)
    assert len(shards(folder)) >= 2


def copy_suite(tiny_suite, root: Path) -> Path:
    """tiny-a's checkpoints and the suite's tokenizer under ``root`` (a suites folder); returns the folder
    of step ``STEP``."""
    settings, source = tiny_suite
    name = settings.suite.name
    shutil.copytree(source / name / "tiny-a", root / name / "tiny-a")
    shutil.copy(source / name / "tokenizer.json", root / name / "tokenizer.json")
    return root / name / "tiny-a" / f"step{STEP}"


@pytest.fixture
def sharded(tiny_suite, tmp_path):
    """``(suite, suites_root, step_folder)``: a copy of tiny-a whose step 8 is stored sharded."""
    root = tmp_path / "suites"
    folder = copy_suite(tiny_suite, root)
    shard_in_place(folder)
    return tiny_suite[0].suite, root, folder


def ref_of(suite, root: Path):
    (ref,) = open_source(suite, root).refs("tiny-a", [STEP])
    return ref


def settings_for(tiny_suite, suites: Path, data: Path):
    """The tiny config extracting tiny-a step 8 from ``suites`` into ``data``."""
    settings = tiny_suite[0]
    paths = dataclasses.replace(
        settings.paths, data=str(data), warehouse=str(data / "warehouse"), runs=str(data / "runs"),
        suites=str(suites),
    )  # fmt: skip
    steps = dataclasses.replace(settings.steps, only=[STEP])
    return dataclasses.replace(settings, paths=paths, steps=steps, models=["tiny-a"], progress=False)


ROWS = {
    "checkpoints": "select * from checkpoints",
    "activation_stats": "select * from activation_stats",
    "sketches": "select * from sketches",
    "spectra": "select * from spectra",
    "matrix_stats": "select * from matrix_stats",
}


def rows(root: Path) -> dict[str, list]:
    con = warehouse.connect(root)
    try:
        return {table: sorted(map(repr, con.sql(sql).fetchall())) for table, sql in ROWS.items()}
    finally:
        con.close()


def test_a_sharded_checkpoint_has_the_weights_sha256_and_the_rows_of_the_whole_one(
    tiny_suite, sharded, tmp_path
):
    suite, root, folder = sharded
    whole_root = tmp_path / "whole-suites"
    copy_suite(tiny_suite, whole_root)
    loaded, whole = load_checkpoint(ref_of(suite, root)), load_checkpoint(ref_of(suite, whole_root))
    assert loaded.weights_sha256 == whole.weights_sha256  # over the state dict: the layout is no identity
    assert loaded.n_params == whole.n_params

    settings = settings_for(tiny_suite, root, tmp_path / "data")
    report = run_extract(settings)
    assert report.ok and report.committed == [f"tiny-a step{STEP}"], report.failed
    reference = run_extract(settings_for(tiny_suite, whole_root, tmp_path / "whole-data"))
    assert reference.ok
    assert rows(Path(settings.paths.warehouse)) == rows(tmp_path / "whole-data" / "warehouse")

    (entry,) = [
        e for e in Warehouse(settings.paths.warehouse).committed().values() if e.meta.get("kind") == "extract"
    ]
    assert set(entry.meta["weights_file"]["files"]) == {
        INDEX,
        "config.json",
        *(p.name for p in shards(folder)),
    }


def test_a_changed_shard_is_extracted_again(tiny_suite, sharded, tmp_path):
    suite, root, folder = sharded
    settings = settings_for(tiny_suite, root, tmp_path / "data")
    assert run_extract(settings).ok
    assert run_extract(settings).skipped == 1  # nothing changed
    last = shards(folder)[-1]  # not the first: every shard is fingerprinted
    tensors = load_file(last)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1
    save_file(tensors, last, metadata={"format": "pt"})
    again = run_extract(settings)
    assert again.committed == [f"tiny-a step{STEP}"] and again.replaced == again.changed == 1
    con = warehouse.connect(settings.paths.warehouse)
    try:
        (stored,) = con.sql("select weights_sha256 from checkpoints").fetchall()[0]
    finally:
        con.close()
    assert stored == load_checkpoint(ref_of(suite, root)).weights_sha256  # the rows of the weights there now


# -- hostile sharded checkpoints --------------------------------------------------------------------------


def _index(folder: Path) -> dict:
    return json.loads((folder / INDEX).read_text())


def _second_shard_missing(folder: Path) -> Path:
    shards(folder)[1].unlink()
    return folder / INDEX


def _not_json(folder: Path) -> Path:
    (folder / INDEX).write_text('{"metadata": {}, "weight_map": {')
    return folder / INDEX


def _no_weight_map(folder: Path) -> Path:
    (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": 0}}))
    return folder / INDEX


def _shard_outside_the_folder(folder: Path) -> Path:
    index = _index(folder)
    name = sorted(index["weight_map"])[0]
    index["weight_map"][name] = "../../elsewhere.safetensors"
    (folder / INDEX).write_text(json.dumps(index))
    return folder / INDEX


def _shard_lacks_a_tensor(folder: Path) -> Path:
    shard = shards(folder)[-1]
    tensors = load_file(shard)
    tensors.pop(sorted(tensors)[-1])
    save_file(tensors, shard, metadata={"format": "pt"})
    return shard


def _tensor_in_two_shards(folder: Path) -> Path:
    first, second = shards(folder)[:2]
    copy = load_file(first)
    name = sorted(copy)[0]
    tensors = load_file(second)
    tensors[name] = copy[name] * 2  # another copy of a tensor the index assigns to the first shard
    save_file(tensors, second, metadata={"format": "pt"})
    return second


def _tensor_the_index_does_not_list(folder: Path) -> Path:
    import numpy as np

    shard = shards(folder)[0]
    tensors = load_file(shard)
    tensors["gpt_neox.extra.weight"] = np.ones(4, dtype=np.float32)
    save_file(tensors, shard, metadata={"format": "pt"})
    return shard


def _truncated_shard(folder: Path) -> Path:
    shard = shards(folder)[1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    return shard


HOSTILE = {
    "missing_shard": (_second_shard_missing, r"lists shard model-00002-of-\d+\.safetensors .*which is not in"),
    "not_json": (_not_json, r"is malformed: not JSON"),
    "no_weight_map": (_no_weight_map, r"is malformed: it has no weight_map"),
    "shard_outside": (_shard_outside_the_folder, r"'\.\./\.\./elsewhere\.safetensors', not a safetensors file beside"),
    "shard_lacks_tensor": (_shard_lacks_a_tensor, r"lacks 1 tensor\(s\) its index model\.safetensors\.index\.json assigns"),
    "tensor_in_two_shards": (_tensor_in_two_shards, r"is in two shards, .* which copy would load is undefined"),
    "unlisted_tensor": (_tensor_the_index_does_not_list, r"holds 1 tensor\(s\) its index .* does not list \(e\.g\. gpt_neox\.extra\.weight\)"),
    "truncated_shard": (_truncated_shard, r"is truncated or corrupt"),
}  # fmt: skip
# the cases found when the files are listed, before any shard is read (the fingerprint's read too)
FAILS_WHEN_LISTED = {"missing_shard", "not_json", "no_weight_map", "shard_outside"}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_sharded_checkpoint_fails_naming_the_file_and_the_fix(sharded, case):
    suite, root, folder = sharded
    spoil, pattern = HOSTILE[case]
    named = spoil(folder)
    ref = ref_of(suite, root)
    reads = [lambda: load_checkpoint(ref)]
    if case in FAILS_WHEN_LISTED:  # the task fingerprints the files before it loads them: the same error
        reads.append(lambda: checkpoint_fingerprint(ref))
    for read in reads:
        with pytest.raises(CheckpointError, match=pattern) as caught:
            read()
        assert str(named) in caught.value.message
        assert caught.value.fix and ("save" in caught.value.fix or "rebuild" in caught.value.fix)


def test_a_shard_file_the_index_does_not_list_is_never_read(sharded, tmp_path):
    """A stray ``model-00009-of-00009.safetensors`` beside the index (left from another save): transformers
    reads only the shards the index lists, so neither does layerlake check or fingerprint it."""
    suite, root, folder = sharded
    ref = ref_of(suite, root)
    before, fingerprint = load_checkpoint(ref).weights_sha256, checkpoint_fingerprint(ref)
    (folder / "model-00009-of-00009.safetensors").write_bytes(b"not safetensors at all")
    assert load_checkpoint(ref).weights_sha256 == before
    assert checkpoint_fingerprint(ref)["files"].keys() == fingerprint["files"].keys()


def test_pickled_shards_and_shards_without_their_index_are_refused_clearly(sharded):
    suite, root, folder = sharded
    ref = ref_of(suite, root)
    for file in [folder / INDEX, *shards(folder)]:
        file.unlink()
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"a shard")
    with pytest.raises(
        CheckpointError,
        match=r"has shards \(model-00001-of-00002.safetensors\) but no model\.safetensors\.index\.json",
    ) as caught:
        load_checkpoint(ref)
    assert "restore model.safetensors.index.json" in caught.value.fix
    (folder / "model-00001-of-00002.safetensors").unlink()
    (folder / "pytorch_model.bin.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"a": "pytorch_model-00001-of-00002.bin"}})
    )
    (folder / "pytorch_model-00001-of-00002.bin").write_bytes(b"a pickle")
    for read in (lambda: load_checkpoint(ref), lambda: checkpoint_fingerprint(ref)):
        with pytest.raises(
            CheckpointError,
            match=r"only pytorch_model\.bin\.index\.json and the pickled shards it lists \(a pickle: layerlake reads safetensors only\)",
        ) as caught:
            read()
        assert "save_pretrained" in caught.value.fix


# -- the hub ------------------------------------------------------------------------------------------------

REPO_ID = "tinyorg/tiny-sharded"


def hub_snapshot(cache: Path, folder: Path, revision: str) -> Path:
    """Lay ``folder`` out in the hub cache as revision ``revision`` of ``REPO_ID``: blobs named by their
    sha256, a snapshot of symlinks named by the commit, and the ref. Returns the snapshot folder."""
    repo = cache / f"models--{REPO_ID.replace('/', '--')}"
    commit = hashlib.sha1(revision.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for file in sorted(folder.iterdir()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(Path("../../blobs") / blob.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snapshot


@pytest.fixture
def hub(tiny_suite, sharded, tmp_path, monkeypatch):
    """``(source, snapshot)``: an offline hub cache holding step 8 of tiny-a, stored sharded."""
    suite, _, folder = sharded
    cache = tmp_path / "hub"
    snapshot = hub_snapshot(cache, folder, f"step{STEP}")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    spec = ModelSpec(name="tiny-a", repo=REPO_ID, n_layers=1, d_model=32, n_heads=2, d_mlp=64)
    hub_suite = dataclasses.replace(suite, name="tinyhub", source="hf", models=[spec])
    return open_source(hub_suite, "/nonexistent"), snapshot


def test_a_sharded_hub_revision_loads_with_the_weights_sha256_of_the_whole_checkpoint(tiny_suite, hub):
    source, _ = hub
    settings, root = tiny_suite
    (ref,) = source.refs("tiny-a", [STEP])
    whole = load_checkpoint(open_source(settings.suite, root).refs("tiny-a", [STEP])[0])
    assert source.load(ref).weights_sha256 == whole.weights_sha256


def test_a_hostile_sharded_hub_revision_fails_naming_the_cached_file(hub):
    source, snapshot = hub
    (ref,) = source.refs("tiny-a", [STEP])
    second = snapshot / shards(snapshot)[1].name
    blob = second.resolve()
    tensors = load_file(blob)
    first = load_file(shards(snapshot)[0].resolve())
    name = sorted(first)[0]
    tensors[name] = first[name]  # the first shard's tensor, in the second shard too
    blob.unlink()
    save_file(tensors, blob, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=rf"tensor {name} is in two shards") as caught:
        source.load(ref)
    assert str(second) in caught.value.message
    assert f"hf cache rm {snapshot.name}" in caught.value.fix
    second.unlink()  # the shard not in the cache (and offline: no download)
    with pytest.raises(
        CheckpointError,
        match=rf"lists shard {second.name} .*which the hub cache does not hold \({REPO_ID}@step{STEP}\)",
    ):
        source.load(ref)
