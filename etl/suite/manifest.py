"""``<suite>/suite.json``: what was built from which config, so an unchanged suite is reused.

Each model's entry holds the hash of everything that decides its weights (its spec, the
schedule, the training config, the corpus and the format version) and whether it is complete.
A model whose hash changed is rebuilt; the others are kept.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from layerlake.conf.schema import ModelSpec, SuiteConfig
from layerlake.core.hashing import stable_hash
from layerlake.etl.errors import SuiteError

MANIFEST = "suite.json"
TRACKING_KEYS = ("variant", "snapshots", "torch_threads")  # they do not change the weights a build gives
TOKENIZER = "tokenizer.json"
FORMAT_VERSION = 1  # bump when the training code changes the weights a config gives


def model_config_hash(spec: ModelSpec, suite: SuiteConfig, corpus_sha256: str, tokenizer_sha256: str) -> str:
    """Identity of one model's build: equal hashes give bit-identical checkpoints."""
    return stable_hash(
        {
            "format": FORMAT_VERSION,
            "model": asdict(spec),
            "steps": sorted(suite.steps),
            "train": {k: v for k, v in asdict(suite.train).items() if k not in TRACKING_KEYS},
            "corpus_sha256": corpus_sha256,
            "tokenizer_sha256": tokenizer_sha256,
        }
    )


def tokenizer_key(suite: SuiteConfig, corpus_sha256: str) -> str:
    return stable_hash({"vocab_size": suite.train.vocab_size, "corpus_sha256": corpus_sha256})


def suite_hash(model_hashes: dict[str, str]) -> str:
    """Identity of the whole suite config (models, steps, train, corpus): a hash of its models' hashes."""
    return stable_hash(model_hashes)


def read(root: Path) -> dict:
    """The manifest of the suite folder ``root``; an empty one when absent."""
    path = root / MANIFEST
    if not path.is_file():
        return {"models": {}}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SuiteError(
            f"the suite manifest {path} is corrupt ({error})",
            fix=f"delete {path} and run `layerlake suite build` (it rebuilds the suite's models)",
        ) from None
    if not isinstance(record, dict) or not isinstance(record.get("models", {}), dict):
        raise SuiteError(
            f"the suite manifest {path} is not a suite manifest",
            fix=f"delete {path} and run `layerlake suite build` (it rebuilds the suite's models)",
        )
    record.setdefault("models", {})
    return record


def write(root: Path, manifest: dict) -> None:
    """Replace the manifest atomically."""
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{MANIFEST}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, root / MANIFEST)
