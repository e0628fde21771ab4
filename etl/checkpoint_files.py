"""The files a checkpoint is read from: its weights, whole or sharded, and what its rows depend on.

Weights are safetensors: ``model.safetensors``, or, for a model larger than ``save_pretrained``'s
``max_shard_size`` (Pythia 1.4b and up on the hub), a sharded checkpoint: an index,
``model.safetensors.index.json``, whose ``weight_map`` assigns each tensor to one shard file beside it
(``model-00001-of-00003.safetensors`` ...). transformers reads ``model.safetensors`` when there is one (an
index beside it is then not read), else every shard the index lists, each in full, without checking that a
shard holds what the index says: a tensor in two shards loads from whichever comes last, one the index
puts in the wrong shard loads anyway. So before a sharded checkpoint is loaded, ``check_shards`` holds
each shard to its index: every tensor the index assigns to a shard is in it, no tensor is in two shards,
no shard holds a tensor the index does not list. A file in the folder the index does not list (a stray
``model-00003-of-00003.safetensors``) is never read, so it is left alone: not checked, not fingerprinted.

``fingerprint`` and ``unchanged``: the size, mtime and sha256 of each file a local checkpoint's rows are
made from (the driver compares them to tell whether a committed checkpoint changed on disk).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from layerlake.core.hashing import sha256_file
from layerlake.etl.errors import CheckpointError

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class WeightFiles:
    """The files a checkpoint's weights are read from: one file (``index`` None), or an index and the
    shards it lists (sorted by name), with its ``weight_map`` (tensor name -> shard file name)."""

    index: Path | None
    shards: tuple[Path, ...]
    weight_map: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def paths(self) -> tuple[Path, ...]:
        """Every file read: the index first, then the shards."""
        return (self.index, *self.shards) if self.index is not None else self.shards

    @property
    def main(self) -> Path:
        """The file that names the weights: the index of a sharded checkpoint, else the one file."""
        return self.index if self.index is not None else self.shards[0]


def read_index(path: Path, fix: str) -> dict[str, str]:
    """A sharded checkpoint's ``weight_map``; a ``CheckpointError`` naming the index when it is not one.

    Besides the map, transformers reads the index's ``metadata`` object, so an index without one is
    malformed too. A shard must be a ``.safetensors`` file beside the index (a bare file name)."""
    try:
        index = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"weights index {path} does not exist", fix=fix) from None
    except (OSError, ValueError) as error:  # ValueError: not JSON, not UTF-8
        raise CheckpointError(f"weights index {path} is malformed: not JSON ({error})", fix=fix) from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(
            f"weights index {path} is malformed: it has no weight_map (an object: tensor name -> shard file)",
            fix=fix,
        )
    if not isinstance(index.get("metadata"), dict):
        raise CheckpointError(f"weights index {path} is malformed: it has no metadata object", fix=fix)
    for tensor, shard in weight_map.items():
        if not (isinstance(shard, str) and shard.endswith(".safetensors") and Path(shard).name == shard):
            raise CheckpointError(
                f"weights index {path} is malformed: it assigns tensor {tensor} to {shard!r}, not a "
                f"safetensors file beside the index",
                fix=fix,
            )
    return weight_map


def shard_names(weight_map: dict[str, str]) -> list[str]:
    """The shard files an index lists, sorted."""
    return sorted(set(weight_map.values()))


def missing_shard(
    index: Path, name: str, weight_map: dict[str, str], absent: str, fix: str
) -> CheckpointError:
    """The error for a shard the index lists that is not there (``absent`` says where it was looked for)."""
    tensors = sorted(t for t, s in weight_map.items() if s == name)
    return CheckpointError(
        f"weights index {index} lists shard {name} (holding {len(tensors)} tensor(s), e.g. {_some(tensors)}), "
        f"which {absent}",
        fix=fix,
    )


def local_weight_files(folder: Path, fix: str) -> WeightFiles | None:
    """What transformers reads in ``folder``: ``model.safetensors`` when present, else the index and each
    shard it lists (a listed shard that is missing is a ``CheckpointError``); None when it has neither."""
    single = folder / WEIGHTS_FILE
    if single.is_file():
        return WeightFiles(None, (single,))
    index = folder / WEIGHTS_INDEX
    if not index.is_file():
        return None
    weight_map = read_index(index, fix)
    for name in shard_names(weight_map):
        if not (folder / name).is_file():
            raise missing_shard(index, name, weight_map, f"is not in {folder}", fix)
    return WeightFiles(index, tuple(folder / name for name in shard_names(weight_map)), weight_map)


def tensor_names(path: Path, fix: str) -> set[str]:
    """The tensors a safetensors file's header lists (read after ``sources.check_weights_file`` passed)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            return set(handle.keys())
    except Exception as error:  # a header safetensors itself cannot read: the shard is unusable
        raise CheckpointError(
            f"weights file {path} is corrupt: unreadable header ({type(error).__name__}: {error})", fix=fix
        ) from None


def check_shards(files: WeightFiles, fix: str) -> None:
    """Each shard of a sharded checkpoint holds exactly what its index assigns to it: a tensor the index
    assigns to a shard that lacks it, a tensor in two shards, or one the index does not list is a
    ``CheckpointError`` naming the shard, the tensor and the index. Nothing to check for one file."""
    if files.index is None:
        return
    index = files.index.name
    held: dict[str, Path] = {}
    for shard in files.shards:
        names = tensor_names(shard, fix)
        lacking = sorted(t for t, s in files.weight_map.items() if s == shard.name and t not in names)
        if lacking:
            raise CheckpointError(
                f"shard {shard} lacks {len(lacking)} tensor(s) its index {index} assigns to it "
                f"(e.g. {_some(lacking)})",
                fix=fix,
            )
        for name in sorted(names):
            if name in held:
                raise CheckpointError(
                    f"tensor {name} is in two shards, {held[name]} and {shard} (its index {index} assigns "
                    f"it to {files.weight_map.get(name, 'neither')}): which copy would load is undefined",
                    fix=fix,
                )
            held[name] = shard
    unlisted = sorted(set(held) - set(files.weight_map))
    if unlisted:
        raise CheckpointError(
            f"shard {held[unlisted[0]]} holds {len(unlisted)} tensor(s) its index {index} does not list "
            f"(e.g. {_some(unlisted)})",
            fix=fix,
        )


def file_fingerprint(path: Path) -> dict:
    """One file's size, mtime and sha256."""
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256_file(path)}


def fingerprint(paths: Iterable[Path]) -> dict:
    """``{"files": {name: {size, mtime_ns, sha256}}}`` of the files a checkpoint's rows are made from."""
    return {"files": {path.name: file_fingerprint(path) for path in paths}}


def unchanged(paths: Iterable[Path], recorded: dict) -> bool:
    """Whether ``paths`` are the files ``recorded`` (a ``fingerprint``) was taken of: the same names, and
    each with the same size and mtime (cheap), else the same sha256 (read once, e.g. after a copy that did
    not keep mtimes). A recorded file that is gone now compares as unchanged: nothing to compare with, and
    the committed rows are kept (the task would only fail)."""
    now = {path.name: path for path in paths}
    files = recorded.get("files") or {}
    if set(now) - set(files):
        return False  # another file is read now: another layout of the weights (sharded, or whole)
    for name, before in files.items():
        path = now.get(name)
        if path is None:
            continue
        try:
            stat = path.stat()
        except FileNotFoundError:
            continue
        if (stat.st_size, stat.st_mtime_ns) == (before.get("size"), before.get("mtime_ns")):
            continue
        if stat.st_size != before.get("size") or sha256_file(path) != before.get("sha256"):
            return False
    return True


def _some(names: list[str], k: int = 3) -> str:
    return ", ".join(names[:k]) + (" ..." if len(names) > k else "")
