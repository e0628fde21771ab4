"""Probe batches: the fixed token sequences, and the positions read out of them, that every
checkpoint of a suite sees.

A batch is ``n_sequences`` consecutive, non-overlapping windows of exactly ``seq_len`` tokens,
taken from the start of the text, plus a position rule:

- ``last``: the last token of each sequence (as the paper: n = n_sequences rows);
- ``all``: every token (n = n_sequences * seq_len);
- ``sample``: ``n_sample`` distinct (sequence, position) pairs drawn with ``seed``, sorted.

``probe_id`` is the first 16 hex digits of the sha256 of the token ids, the rule and the positions:
two batches share an id exactly when every checkpoint sees identical inputs and read-outs, so
rows of different probes can never be mixed by a query.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from layerlake.conf.schema import ProbeConfig, SuiteConfig
from layerlake.core.choices import PositionRule, ProbeSource
from layerlake.core.hashing import stable_hash
from layerlake.etl.errors import ProbeError
from layerlake.etl.task import ProbeBatch


def build_probe(
    probe: ProbeConfig, suite: SuiteConfig, suites_root: str | Path, models: Sequence[str] | None = None
) -> ProbeBatch:
    """The probe batch ``probe`` describes, tokenized with ``suite``'s tokenizer (for a hub suite, that
    of the first of ``models``, the models being extracted; default the suite's first)."""
    PositionRule.parse(probe.positions, "probe.positions")
    if probe.n_sequences < 1 or probe.seq_len < 1:
        raise ProbeError(
            f"probe needs n_sequences >= 1 and seq_len >= 1, got {probe.n_sequences} and {probe.seq_len}",
            fix="set probe.n_sequences and probe.seq_len to positive numbers",
        )
    text, source = probe_text(probe)
    tokenizer = load_tokenizer(suite, suites_root, models)
    ids = _encode(tokenizer, text)
    need = probe.n_sequences * probe.seq_len
    if len(ids) < need:
        raise ProbeError(
            f"probe text from {source} has {len(ids)} tokens, but {probe.n_sequences} sequences x "
            f"{probe.seq_len} tokens need {need}",
            fix="lower probe.n_sequences or probe.seq_len, or give a longer text (probe.source=file probe.path=...)",
        )
    windows = np.asarray(ids[:need], dtype=np.int64).reshape(probe.n_sequences, probe.seq_len)
    token_ids = tuple(tuple(int(t) for t in row) for row in windows)
    positions = select_positions(probe)
    probe_id = stable_hash({"token_ids": token_ids, "rule": probe.positions, "positions": positions})[:16]
    seed = probe.seed if probe.positions == "sample" else None
    return ProbeBatch(probe_id, source, token_ids, positions, probe.positions, seed)


def select_positions(probe: ProbeConfig) -> tuple[tuple[int, int], ...]:
    """(sequence, token) pairs read out of the batch, in row order.

    >>> select_positions(ProbeConfig(n_sequences=2, seq_len=3, positions="last"))
    ((0, 2), (1, 2))
    >>> len(select_positions(ProbeConfig(n_sequences=2, seq_len=3, positions="all")))
    6
    """
    n, length = probe.n_sequences, probe.seq_len
    if probe.positions == "last":
        return tuple((i, length - 1) for i in range(n))
    if probe.positions == "all":
        return tuple((i, j) for i in range(n) for j in range(length))
    total = n * length
    if not 1 <= probe.n_sample <= total:
        raise ProbeError(
            f"probe positions=sample asks for n_sample={probe.n_sample} of {total} (sequence, position) pairs",
            fix=f"set probe.n_sample between 1 and {total}",
        )
    flat = np.sort(np.random.default_rng(probe.seed).choice(total, size=probe.n_sample, replace=False))
    return tuple((int(k // length), int(k % length)) for k in flat)


def probe_text(probe: ProbeConfig) -> tuple[str, str]:
    """``(text, source label)`` for the probe's text source."""
    if probe.source == "embedded":
        from layerlake.etl.suite.corpus import held_out_text

        return held_out_text(), "embedded"
    if probe.source == "file":
        return _file_text(probe.path), f"file:{Path(probe.path).name}"  # no path of this machine is stored
    if probe.source == "hub":
        return _hub_text(probe.dataset), f"hub:{probe.dataset}"
    raise ProbeError(
        f"unknown probe source {probe.source!r}", fix=f"use one of: {', '.join(ProbeSource.values())}"
    )


def load_tokenizer(suite: SuiteConfig, suites_root: str | Path, models: Sequence[str] | None = None):
    """The suite's tokenizer: local suites ``<suite>/tokenizer.json``; hub suites the repo of the first of
    ``models`` (the models asked for; default the suite's first model with a repo)."""
    if suite.source == "local":
        from layerlake.etl.suite.corpus import load_tokenizer_file

        path = Path(suites_root) / suite.name / "tokenizer.json"
        if not path.is_file():
            raise ProbeError(
                f"suite {suite.name!r} has no tokenizer at {path}",
                fix="build the suite first: `layerlake suite build`",
            )
        return load_tokenizer_file(path)
    chosen = [m for m in suite.models if models is None or m.name in models]
    repos = [(m.name, m.repo) for m in chosen if m.repo]
    if not repos:
        raise ProbeError(
            f"hub suite {suite.name!r} names no repo for {', '.join(m.name for m in chosen) or 'its models'}",
            fix="set `repo:` on its models",
        )
    from transformers import AutoTokenizer

    from layerlake.etl.sources import HUB_FIX, hub_cache_dir, hub_local_only

    local_only, why = hub_local_only()
    try:
        return AutoTokenizer.from_pretrained(
            repos[0][1],
            trust_remote_code=suite.trust_remote_code,
            cache_dir=hub_cache_dir(),
            local_files_only=local_only,
        )
    except Exception as error:
        reason = f"{why}, and it is not in the hub cache {hub_cache_dir()}" if local_only else (
            f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
        )  # fmt: skip
        raise ProbeError(
            f"cannot load the tokenizer of {repos[0][1]} (model {repos[0][0]}): {reason}",
            fix=HUB_FIX if local_only else "check the repo exists on the hub, or use a local suite",
        ) from error


def probe_row(batch: ProbeBatch) -> dict:
    """The batch as a row of the warehouse table ``probes`` (without the suite / model partitions)."""
    return {
        "probe_id": batch.probe_id,
        "source": batch.source,
        "n_sequences": batch.n_sequences,
        "seq_len": batch.seq_len,
        "positions": batch.rule,
        "n": batch.n,
        "seed": batch.seed,
    }


def _encode(tokenizer, text: str) -> list[int]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # fast tokenizers: no "longer than model_max_length" warning for a whole text
        return backend.encode(text, add_special_tokens=False).ids
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


def _file_text(path: str | None) -> str:
    if not path:
        raise ProbeError("probe.source=file needs probe.path", fix="set probe.path=/path/to/text.txt")
    file = Path(path).expanduser()
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProbeError(
            f"probe text file {file} does not exist", fix="set probe.path to a UTF-8 text file"
        ) from None
    except UnicodeDecodeError as error:
        raise ProbeError(f"probe text file {file} is not UTF-8 ({error.reason})",
                         fix="convert it to UTF-8 or pick another file") from None  # fmt: skip


def _hub_text(dataset: str | None) -> str:
    """The ``text`` column of a hub dataset's first split, joined by blank lines."""
    if not dataset:
        raise ProbeError("probe.source=hub needs probe.dataset", fix="set probe.dataset=<org>/<name>")
    try:
        import datasets
    except ImportError:
        raise ProbeError(
            f"probe.source=hub (dataset {dataset!r}) needs the `datasets` package, which is not installed",
            fix="pip install datasets, or use probe.source=embedded / probe.source=file",
        ) from None
    from layerlake.etl.sources import hub_local_only

    local_only, why = hub_local_only()
    if local_only:
        raise ProbeError(
            f"probe.source=hub (dataset {dataset!r}) needs the network, but {why}",
            fix="unset HF_HUB_OFFLINE, or save the text to a file and use probe.source=file probe.path=...",
        )
    try:
        loaded = datasets.load_dataset(dataset)
        split = loaded[next(iter(loaded))] if hasattr(loaded, "keys") else loaded
        return "\n\n".join(split["text"])
    except Exception as error:  # network, missing dataset, no `text` column
        raise ProbeError(
            f"cannot read the text of hub dataset {dataset!r}: {type(error).__name__}: {str(error)[:200]}",
            fix="check the network and the name, or use probe.source=file with a local copy",
        ) from error
