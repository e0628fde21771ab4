"""Probe batches: deterministic windows of held-out text, position rules, ids, errors, the warehouse row."""

from __future__ import annotations

from dataclasses import replace

import pyarrow as pa
import pytest

from layerlake.conf.schema import ProbeConfig
from layerlake.core.errors import ConfigError
from layerlake.etl.errors import ProbeError
from layerlake.etl.probes import build_probe, load_tokenizer, probe_row
from layerlake.etl.suite import corpus
from layerlake.warehouse.schema import PROBES


def _probe(**kwargs) -> ProbeConfig:
    return ProbeConfig(**{"n_sequences": 8, "seq_len": 32, **kwargs})


def test_embedded_probe_is_consecutive_windows_of_held_out_text(tiny_suite):
    settings, root = tiny_suite
    batch = build_probe(_probe(), settings.suite, root)
    expected = corpus.encode(root / "embedded" / "tokenizer.json", corpus.held_out_text())[: 8 * 32]
    assert batch.token_ids == tuple(tuple(int(t) for t in expected[i * 32 : (i + 1) * 32]) for i in range(8))
    assert batch.positions == tuple((i, 31) for i in range(8))
    assert (batch.n_sequences, batch.seq_len, batch.n, batch.rule, batch.source) == (
        8,
        32,
        8,
        "last",
        "embedded",
    )
    # held out means not trained on: the probe's text is not inside the training part
    text = load_tokenizer(settings.suite, root).decode(list(batch.token_ids[0]))
    train_text, held_out = corpus.split_corpus(corpus.corpus_text())
    assert text in held_out and text not in train_text


def test_probe_id_is_stable_and_separates_rules_and_texts(tiny_suite, tmp_path):
    settings, root = tiny_suite
    last = build_probe(_probe(), settings.suite, root)
    assert build_probe(_probe(), settings.suite, root).probe_id == last.probe_id
    assert len(last.probe_id) == 16 and int(last.probe_id, 16) >= 0
    every = build_probe(_probe(positions="all"), settings.suite, root)
    assert every.token_ids == last.token_ids and every.probe_id != last.probe_id
    assert build_probe(_probe(seq_len=31), settings.suite, root).probe_id != last.probe_id
    path = tmp_path / "text.txt"
    path.write_text(corpus.held_out_text()[::-1], encoding="utf-8")
    other = build_probe(_probe(source="file", path=str(path)), settings.suite, root)
    assert other.probe_id != last.probe_id and other.source == f"file:{path.name}"


def test_all_and_sample_positions(tiny_suite):
    settings, root = tiny_suite
    every = build_probe(_probe(positions="all"), settings.suite, root)
    assert every.n == 8 * 32 and every.positions[:2] == ((0, 0), (0, 1)) and every.positions[-1] == (7, 31)
    sample = build_probe(_probe(positions="sample", n_sample=20, seed=3), settings.suite, root)
    assert sample.n == 20 and len(set(sample.positions)) == 20
    assert list(sample.positions) == sorted(sample.positions)
    assert all(0 <= i < 8 and 0 <= j < 32 for i, j in sample.positions)
    again = build_probe(_probe(positions="sample", n_sample=20, seed=3), settings.suite, root)
    reseeded = build_probe(_probe(positions="sample", n_sample=20, seed=4), settings.suite, root)
    assert again.positions == sample.positions and again.probe_id == sample.probe_id
    assert reseeded.positions != sample.positions and reseeded.probe_id != sample.probe_id
    with pytest.raises(ProbeError, match="n_sample=999 of 256"):
        build_probe(_probe(positions="sample", n_sample=999), settings.suite, root)


def test_too_little_text_names_both_counts(tiny_suite, tmp_path):
    settings, root = tiny_suite
    path = tmp_path / "short.txt"
    path.write_text("A short text.", encoding="utf-8")
    n_tokens = len(corpus.encode(root / "embedded" / "tokenizer.json", "A short text."))
    with pytest.raises(ProbeError) as caught:
        build_probe(_probe(source="file", path=str(path)), settings.suite, root)
    assert f"has {n_tokens} tokens" in caught.value.message and "need 256" in caught.value.message


def test_bad_sources_are_clear_errors(tiny_suite, tmp_path):
    settings, root = tiny_suite
    with pytest.raises(ProbeError, match="does not exist"):
        build_probe(_probe(source="file", path=str(tmp_path / "missing.txt")), settings.suite, root)
    with pytest.raises(ProbeError, match="needs probe.path"):
        build_probe(_probe(source="file"), settings.suite, root)
    with pytest.raises(ProbeError, match="unknown probe source 'web'"):
        build_probe(_probe(source="web"), settings.suite, root)
    with pytest.raises(ConfigError, match="probe.positions 'first' is not one of"):
        build_probe(_probe(positions="first"), settings.suite, root)
    with pytest.raises(ProbeError, match="no tokenizer at"):
        build_probe(_probe(), settings.suite, tmp_path)


def test_hub_source_offline_is_a_probe_error(tiny_suite, monkeypatch):
    settings, root = tiny_suite
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # this machine has no network: fail at once, not after timeouts
    with pytest.raises(ProbeError, match=r"'nobody/nothing'\) needs the network|`datasets` package"):
        build_probe(_probe(source="hub", dataset="nobody/nothing"), settings.suite, root)


def test_probe_row_matches_the_warehouse_table(tiny_suite):
    settings, root = tiny_suite
    for kwargs in ({}, {"positions": "sample", "n_sample": 10, "seed": 7}):
        batch = build_probe(_probe(**kwargs), settings.suite, root)
        row = probe_row(batch)
        assert tuple(row) == PROBES.column_names
        table = pa.Table.from_pylist([row], schema=PROBES.arrow_schema())
        assert table.num_rows == 1
        assert row["n"] == len(batch.positions)
        assert row["seed"] == (7 if kwargs else None)


def test_hub_suite_tokenizer_offline_is_a_probe_error(tiny_suite, monkeypatch, tmp_path):
    from layerlake.conf.schema import ModelSpec

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    spec = ModelSpec(name="x", repo="nobody/not-cached", n_layers=1, d_model=32, n_heads=2)
    hub = replace(tiny_suite[0].suite, source="hf", models=[spec])
    with pytest.raises(ProbeError, match="nobody/not-cached"):
        load_tokenizer(hub, tmp_path)
