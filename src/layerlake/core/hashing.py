"""Content hashes: what layerlake uses for identities (checkpoints, probes, options, files)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def stable_hash(payload: object) -> str:
    """sha256 of the canonical JSON of ``payload`` (sorted keys, no spaces).

    >>> stable_hash({"b": 1, "a": [1, 2]}) == stable_hash({"a": [1, 2], "b": 1})
    True
    """
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
