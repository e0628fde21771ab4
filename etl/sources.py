"""Checkpoint sources: where a suite's (model, step) checkpoints live, and one loader for all of them.

Two sources behind one interface (``open_source``):

- ``local``: Hugging Face model folders ``<suites_root>/<suite>/<model>/step<N>/`` (what
  ``layerlake suite build`` writes); a ref's ``location`` is that absolute folder.
- ``hf``: hub repos whose revisions are ``step<N>`` (Pythia); ``location`` is the repo id.

Both load through ``AutoModelForCausalLM.from_pretrained`` (``_from_pretrained``), so the embedded
suite exercises the hub code path. Loading never runs code from a checkpoint unless the suite
says ``trust_remote_code``: weights come from safetensors, or ``torch.load(weights_only=True)``.

A checkpoint's identity is the sha256 of its weights (``weights_sha256``), never its step label:
Pythia serves duplicated and mislabelled revisions, which the ``duplicate_weights`` audit reports.

The hub loader reads ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and ``HF_ENDPOINT`` when it is called (not only
when ``huggingface_hub`` is imported), so a Ray worker or a test can point it at a cache. Before the
first download a process checks once that the hub answers (``hub_local_only``: one TCP connection, a
few seconds at most); when it does not, every load in that process reads the cache only, and a
revision that is not cached fails at once naming its repo, instead of after a minute of retries.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import hashlib
import json
import logging
import os
import socket
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerlake.conf.schema import ModelSpec, StepsConfig, SuiteConfig
from layerlake.core.choices import Dtype, SuiteSource
from layerlake.etl.checkpoint_files import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    WEIGHTS_INDEX,
    WeightFiles,
    check_shards,
    fingerprint,
    local_weight_files,
    missing_shard,
    read_index,
    shard_names,
)
from layerlake.etl.errors import CheckpointError, SuiteError
from layerlake.etl.task import CheckpointRef, extract_run_id

STATE_DICT_FILE = "model.pt"  # a custom model's state dict saved with torch.save (read weights_only)
HUB_CONNECT_TIMEOUT = 3.0  # seconds to open one TCP connection to the hub (or its proxy)
log = logging.getLogger(__name__)


@dataclass
class LoadedCheckpoint:
    """A loaded checkpoint: the model (eval mode, on its device), its config, identity and size."""

    model: Any  # torch.nn.Module
    config: Any  # transformers.PretrainedConfig
    weights_sha256: str
    n_params: int


class CheckpointSource:
    """The checkpoints of one suite. Subclasses say where a (model, step) lives."""

    kind: SuiteSource

    def __init__(self, suite: SuiteConfig, suites_root: str | Path) -> None:
        self.suite = suite
        self.suites_root = Path(suites_root).resolve()

    def model_spec(self, model: str) -> ModelSpec:
        """The suite's spec for ``model``; an unknown name lists the suite's models."""
        for spec in self.suite.models:
            if spec.name == model:
                return spec
        known = ", ".join(m.name for m in self.suite.models) or "(none)"
        raise CheckpointError(
            f"suite {self.suite.name!r} has no model {model!r}; its models are: {known}",
            fix="pick one of those names (models=[...]) or another suite (suite=...)",
        )

    def plan_steps(self, model: str, steps_cfg: StepsConfig) -> list[int]:
        """The steps of ``model`` to extract: the suite's schedule as ``steps_cfg`` selects it."""
        return select_steps(self.suite, steps_cfg)

    def refs(self, model: str, steps: Sequence[int]) -> list[CheckpointRef]:
        """One ref per step, in the given order; a step the source cannot serve is a CheckpointError."""
        spec = self.model_spec(model)
        return [self._ref(spec, int(step)) for step in steps]

    def load(self, ref: CheckpointRef, device: str = "cpu", dtype: str = "float32") -> LoadedCheckpoint:
        return load_checkpoint(ref, device=device, dtype=dtype)

    def _ref(self, spec: ModelSpec, step: int) -> CheckpointRef:
        raise NotImplementedError

    def _make_ref(
        self, spec: ModelSpec, step: int, location: str, revision: str | None = None
    ) -> CheckpointRef:
        return CheckpointRef(
            suite=self.suite.name,
            model=spec.name,
            step=step,
            revision=revision or f"step{step}",
            tokens_seen=step * self.suite.tokens_per_step,
            source=self.kind,
            location=location,
            run_id=extract_run_id(self.suite.name, spec.name),
            trust_remote_code=self.suite.trust_remote_code,
            layout=spec.layout or "",
            constructor=constructor_json(spec),
        )


class LocalSource(CheckpointSource):
    """Model folders on disk: ``<suites_root>/<suite>/<model>/step<N>/``."""

    kind = SuiteSource.local

    def model_dir(self, model: str) -> Path:
        return self.suites_root / self.suite.name / model

    def available_steps(self, model: str) -> list[int]:
        """Steps that have a folder, ascending."""
        folder = self.model_dir(model)
        if not folder.is_dir():
            return []
        steps = [_step_of(p.name) for p in folder.glob("step*") if p.is_dir()]
        return sorted(s for s in steps if s is not None)

    def _ref(self, spec: ModelSpec, step: int) -> CheckpointRef:
        """A missing step folder fails the plan (a typo in the steps); a folder whose weights are
        unusable (a pickle only, a truncated file) is planned, and fails its own task when loaded."""
        folder = self.model_dir(spec.name) / f"step{step}"
        if not folder.is_dir():
            available = self.available_steps(spec.name)
            raise CheckpointError(
                f"checkpoint {folder} does not exist ({_nearest_text(step, available)})",
                fix="build the suite with `layerlake suite build`, or choose available steps with steps.only=[...]",
            )
        return self._make_ref(spec, step, str(folder))


class HubSource(CheckpointSource):
    """Hub repos with one revision per checkpoint: ``step<N>`` from the suite's ``steps`` (Pythia's
    layout), or, with ``suite.revisions.discover``, the repo's refs matching ``suite.revisions.pattern``
    (``etl.revisions``)."""

    kind = SuiteSource.hf

    def __init__(self, suite: SuiteConfig, suites_root: str | Path) -> None:
        super().__init__(suite, suites_root)
        self._found: dict[str, dict[int, str]] = {}

    def discovered(self, spec: ModelSpec) -> dict[int, str]:
        """step -> revision of each checkpoint the hub (or the cache) lists for ``spec.repo``."""
        from layerlake.etl.revisions import discover

        self._require_repo(spec)
        if spec.name not in self._found:
            where = f"suite {self.suite.name!r}, model {spec.name!r}"
            local_only = hub_local_only()[0]
            self._found[spec.name] = discover(
                spec.repo, self.suite.revisions, where, hub_cache_dir(), local_only
            )
        return self._found[spec.name]

    def plan_steps(self, model: str, steps_cfg: StepsConfig) -> list[int]:
        if not self.suite.revisions.discover:
            return super().plan_steps(model, steps_cfg)
        from layerlake.etl.revisions import pick

        found = self.discovered(self.model_spec(model))
        if steps_cfg.only is not None:
            missing = [s for s in steps_cfg.only if s not in found]
            if missing:
                raise SuiteError(
                    f"steps.only asks for step {missing[0]}, which {self.model_spec(model).repo} has no "
                    f"checkpoint of ({_nearest_text(missing[0], list(found))})",
                    fix="choose steps the repo lists (its branches matching suite.revisions.pattern)",
                )
            return sorted(set(steps_cfg.only))
        return pick(list(found), self.suite.revisions)

    def _require_repo(self, spec: ModelSpec) -> None:
        if not spec.repo:
            raise SuiteError(
                f"model {spec.name!r} of hub suite {self.suite.name!r} has no `repo`",
                fix="set repo: <org>/<name> for it in the suite config",
            )

    def _ref(self, spec: ModelSpec, step: int) -> CheckpointRef:
        self._require_repo(spec)
        if self.suite.revisions.discover:
            found = self.discovered(spec)
            if step not in found:
                raise CheckpointError(
                    f"{spec.repo} lists no checkpoint at step {step} ({_nearest_text(step, list(found))})",
                    fix="choose steps the repo lists (its branches matching suite.revisions.pattern)",
                )
            return self._make_ref(spec, step, spec.repo, found[step])
        if self.suite.steps and step not in self.suite.steps:
            raise CheckpointError(
                f"{spec.repo} has no revision step{step} in suite {self.suite.name!r}'s schedule "
                f"({_nearest_text(step, sorted(self.suite.steps))})",
                fix="choose steps from the schedule (steps.only=[...] or steps=paper)",
            )
        return self._make_ref(spec, step, spec.repo)


SOURCES: dict[SuiteSource, type[CheckpointSource]] = {
    SuiteSource.local: LocalSource,
    SuiteSource.hf: HubSource,
}


def open_source(suite: SuiteConfig, suites_root: str | Path) -> CheckpointSource:
    """The checkpoint source of ``suite`` (``suite.source``: local | hf)."""
    try:
        return SOURCES[suite.source](suite, suites_root)
    except KeyError:
        raise SuiteError(
            f"suite {suite.name!r} has unknown source {suite.source!r}",
            fix=f"set suite.source to one of: {', '.join(SOURCES)}",
        ) from None


def constructor_json(spec: ModelSpec) -> str:
    """A suite model's constructor as the JSON a ref carries ("" for a Hugging Face model)."""
    if spec.constructor is None:
        return ""
    return json.dumps(
        {"target": spec.constructor.target, "kwargs": dict(spec.constructor.kwargs)}, sort_keys=True
    )


def build_model(ref: CheckpointRef, device: str | None = None) -> Any:
    """The model a ref's constructor builds (random weights; on ``device``, e.g. ``meta`` to read its
    names and shapes without memory)."""
    import importlib

    import torch

    spec = json.loads(ref.constructor)
    target = spec["target"]
    module_name, _, attr = target.partition(":") if ":" in target else target.rpartition(".")
    factory: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        factory = getattr(factory, part)
    with torch.device(device) if device else contextlib.nullcontext():
        return factory(**spec["kwargs"])


LOCAL_FIX = (
    "save the checkpoint again (save_pretrained writes the index and its shards together), restore its "
    "files, or choose other steps (steps.only=[...])"
)


def local_weights(ref: CheckpointRef) -> WeightFiles:
    """A local checkpoint's weights: ``model.safetensors``, else a sharded checkpoint's index and the
    shards it lists (``etl.checkpoint_files``), else, for a model built by a constructor, its state dict
    ``model.pt``. A folder with none of them, or an index naming a shard that is not there, is a
    ``CheckpointError`` saying what the folder holds."""
    folder = Path(ref.location)
    files = local_weight_files(folder, LOCAL_FIX) if folder.is_dir() else None
    if files is None and ref.constructor and (folder / STATE_DICT_FILE).is_file():
        files = WeightFiles(None, (folder / STATE_DICT_FILE,))
    if files is None:
        raise missing_weights(ref)
    return files


def checkpoint_files(ref: CheckpointRef) -> list[Path]:
    """Every file of a local checkpoint its rows are made from, which its fingerprint covers: the weights
    (``local_weights``: one file, or the index and every shard it lists), a Hugging Face model's
    ``config.json`` (the architecture and its options, e.g. ``use_parallel_residual``, ``rotary_pct``,
    ``layer_norm_eps``: they change the forward), and with ``trust_remote_code`` the folder's Python files
    (the model's code). Not ``generation_config.json`` (generation only) nor tokenizer files: the probe's
    token ids come from the suite's tokenizer and are part of the task's identity (its ``probe_id``)."""
    folder = Path(ref.location)
    paths = list(local_weights(ref).paths)
    if not ref.constructor and (folder / CONFIG_FILE).is_file():
        paths.append(folder / CONFIG_FILE)
    if ref.trust_remote_code:
        paths += sorted(folder.glob("*.py"))
    return paths


PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth")


def missing_weights(ref: CheckpointRef) -> CheckpointError:
    """The error for a local checkpoint folder without the weights files layerlake reads, saying what the
    folder holds instead: a pickled ``pytorch_model.bin``, whole or sharded, is not loaded (safetensors
    only); shards without their index."""
    folder = Path(ref.location)
    wanted = f"{WEIGHTS_FILE} (nor a sharded {WEIGHTS_INDEX})"
    if ref.constructor:
        wanted = f"{WEIGHTS_FILE} or {STATE_DICT_FILE} (nor a sharded {WEIGHTS_INDEX})"
    where = f"checkpoint {folder} ({ref.model} step {ref.step})"
    if not folder.is_dir():
        return CheckpointError(f"{where} does not exist", fix="check suite.root and the step folders' names")
    pickled = [name for name in PICKLED_WEIGHTS if (folder / name).is_file() and name != STATE_DICT_FILE]
    if pickled and not ref.constructor:
        what = (
            f"{pickled[0]} and the pickled shards it lists" if pickled[0].endswith(".index.json")
            else pickled[0]
        )  # fmt: skip
        return CheckpointError(
            f"{where} has no {wanted}, only {what} (a pickle: layerlake reads safetensors only)",
            fix=f"convert it once: AutoModelForCausalLM.from_pretrained('{folder}').save_pretrained('{folder}')",
        )
    shards = sorted(p.name for p in folder.glob("model-*-of-*.safetensors"))
    if shards:
        return CheckpointError(
            f"{where} has shards ({', '.join(shards[:3])}{' ...' if len(shards) > 3 else ''}) but no "
            f"{WEIGHTS_INDEX} saying which tensor each holds",
            fix=f"restore {WEIGHTS_INDEX} (save_pretrained writes it beside the shards) or save the checkpoint again",
        )
    return CheckpointError(
        f"{where} has no {wanted}",
        fix="rebuild it with `layerlake suite build` (the embedded suite), restore the file, or choose other "
        "steps (steps.only=[...])",
    )


def check_weight_files(files: WeightFiles, fix: str = LOCAL_FIX) -> None:
    """Every file of ``files`` checked as one whole ``model.safetensors`` is (``check_weights_file``, each
    shard), and a sharded checkpoint's shards against its index (``checkpoint_files.check_shards``)."""
    for shard in files.shards:
        check_weights_file(shard)
    check_shards(files, fix)


def _from_state_dict(ref: CheckpointRef, torch_dtype) -> Any:
    """A model built by the ref's constructor, with the state dict of its step folder loaded (strict)."""
    import torch

    files = local_weights(ref)
    path = files.main
    fix = (
        "save the model's state_dict() there (safetensors.torch.save_model, huggingface_hub's "
        "save_torch_state_dict for shards, or torch.save to model.pt)"
    )
    described = f"the model suite.models[{ref.model}].constructor builds"
    fits = f"set suite.models[{ref.model}].constructor.kwargs to the ones the weights were saved with"
    try:
        model = build_model(ref)
        if path.name != STATE_DICT_FILE:
            check_weight_files(files, fix)
            found = {
                k: v for shard in files.shards for k, v in header_found(check_weights_file(shard)).items()
            }
            check_weights_fit(ref, path, found, parameters_expected(model), described, fits)
            from safetensors.torch import load_model

            missing, unexpected = set(), set()
            for i, shard in enumerate(files.shards):  # a parameter is missing when no shard holds it
                lacks, extra = load_model(model, shard, strict=False)
                missing = set(lacks) if i == 0 else missing & set(lacks)
                unexpected |= set(extra)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and isinstance(state.get("model"), dict):
                state = state["model"]  # a training checkpoint holding the model's state dict
            if isinstance(state, dict):
                found = {
                    k: (str(v.dtype).removeprefix("torch."), not (v.is_floating_point() or v.is_complex()),
                        tuple(v.shape))
                    for k, v in state.items() if isinstance(v, torch.Tensor)
                }  # fmt: skip
                check_weights_fit(ref, path, found, parameters_expected(model), described, fits)
            missing, unexpected = model.load_state_dict(state, strict=False)
    except CheckpointError:
        raise
    except Exception as error:  # an unreadable file, a constructor that fails: this checkpoint is unusable
        raise CheckpointError(
            f"cannot load checkpoint {path} ({ref.suite}/{ref.model} step {ref.step}): "
            f"{type(error).__name__}: {_first_line(error)}",
            fix=fix,
        ) from error
    check_loading_info(ref, {"missing_keys": missing, "unexpected_keys": unexpected})
    return model.to(torch_dtype)


def load_checkpoint(ref: CheckpointRef, device: str = "cpu", dtype: str = "float32") -> LoadedCheckpoint:
    """Load the checkpoint ``ref`` points at, from the ref alone (what a Ray worker calls).

    The weights hash is taken on the CPU copy, before the move to ``device``. A ref with a constructor
    builds its model and loads the step's state dict; its config is the constructor's kwargs.
    """
    import torch

    dtype = Dtype.parse(dtype, "executor.dtype")
    if ref.constructor:
        model = _from_state_dict(ref, getattr(torch, dtype.value))
        model.eval()
        n_params = sum(p.numel() for p in model.parameters())
        digest = weights_sha256(model)
        if device != "cpu":
            model.to(device)
        config = json.loads(ref.constructor)["kwargs"]
        return LoadedCheckpoint(model=model, config=config, weights_sha256=digest, n_params=n_params)
    if ref.source == SuiteSource.local:
        check_weights_fit_config(ref, Path(ref.location))  # dtypes and shapes, before anything is loaded
    try:
        model, info = _from_pretrained(ref, getattr(torch, dtype.value))
    except CheckpointError:
        if ref.source == SuiteSource.hf:  # the failed load cached the files: name the tensor that misfits
            check_weights_fit_config(ref, hub_snapshot(ref))
        raise
    if ref.source == SuiteSource.hf:
        check_weights_fit_config(ref, hub_snapshot(ref))
    check_loading_info(ref, info)
    model.eval()
    digest = weights_sha256(model)
    n_params = sum(p.numel() for p in model.parameters())
    if device != "cpu":
        model.to(device)
    return LoadedCheckpoint(model=model, config=model.config, weights_sha256=digest, n_params=n_params)


# safetensors' integer and boolean dtypes: a tensor the model holds as floating point stored as one of
# these is its bytes read as integers (a header that lies about the dtype stored garbage, exit 0)
INTEGER_DTYPES = frozenset({"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64"})


def check_weights_file(path: str | Path) -> dict[str, dict]:
    """The tensors a complete safetensors file lists (name -> its header entry: ``dtype``, ``shape``,
    ``data_offsets``); a ``CheckpointError`` naming the file otherwise.

    Reads only the header: 8 bytes (little-endian header length h), h bytes of JSON: an object whose
    entries (but ``__metadata__``) each give a tensor's dtype, shape and ``data_offsets``; a complete file
    is exactly 8 + h + max(end offset) bytes long. A file that cannot be read (permissions, an I/O error)
    and a header of any other form are errors naming the file, never a bare Python exception.
    """
    path = Path(path)
    fix = f"delete {path.parent} and rebuild it (`layerlake suite build`) or download it again"
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            header_len = int.from_bytes(handle.read(8), "little")
            if size < 8 or header_len > size - 8:
                raise ValueError(f"header of {header_len} bytes in a {size}-byte file")
            header = json.loads(handle.read(header_len))
        tensors = _header_tensors(header)
        end = max((v["data_offsets"][1] for v in tensors.values()), default=0)
    except FileNotFoundError:
        raise CheckpointError(f"weights file {path} does not exist", fix=fix) from None
    except OSError as error:  # permissions, an I/O error: the file is there but cannot be read
        raise CheckpointError(
            f"cannot read weights file {path}: {error.strerror or type(error).__name__}",
            fix=f"make {path} readable by the user running layerlake (its permissions or owner), or {fix}",
        ) from None
    except (ValueError, KeyError, TypeError, IndexError, RecursionError) as error:
        reason = "nested too deeply" if isinstance(error, RecursionError) else str(error)[:200]
        raise CheckpointError(
            f"weights file {path} is corrupt: unreadable header ({reason})", fix=fix
        ) from None
    if size != 8 + header_len + end:
        raise CheckpointError(
            f"weights file {path} is truncated or corrupt: {size} bytes, its header says {8 + header_len + end}",
            fix=fix,
        )
    return tensors


def _header_tensors(header: Any) -> dict[str, dict]:
    """The tensor entries of a parsed safetensors header; a ``ValueError`` saying what is malformed."""
    if not isinstance(header, dict):
        raise ValueError(f"a JSON {type(header).__name__}, not an object of tensors")
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict):
            raise ValueError(f"tensor {name!r} is described by a JSON {type(entry).__name__}, not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if not isinstance(dtype, str):
            raise ValueError(f"tensor {name!r} has no dtype")
        if not isinstance(shape, list) or not all(_count(n) for n in shape):
            raise ValueError(f"tensor {name!r} has no shape of non-negative integers ({str(shape)[:40]})")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_count(n) for n in offsets)):
            raise ValueError(f"tensor {name!r} has no data_offsets [begin, end] ({str(offsets)[:40]})")
        if offsets[0] > offsets[1]:
            raise ValueError(f"tensor {name!r} ends before it begins ({offsets})")
        tensors[name] = entry
    return tensors


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_weights_fit(ref: CheckpointRef, path: Path, found: dict[str, tuple[str, bool, tuple]],
                      expected: dict[str, tuple[Any, tuple]], described: str, fix: str,
                      prefix: str = "") -> None:  # fmt: skip
    """The weights a file holds fit the parameters of the model they are loaded into, before they are:

    - ``found``: name -> (dtype as the file says it, whether that is an integer or boolean type, shape);
    - ``expected``: the model's parameters, name -> (torch dtype, shape); ``described``: which model.

    A tensor the model holds as floating point that the file stores as integers is refused (its bytes
    would be read as integers and stored as garbage, exit 0), as is one of another shape (transformers
    said only "look at the above report!", a report printed to the local executor's stdout and lost on
    Ray's). Names are matched exactly, or across the model's base ``prefix`` (``gpt_neox``); a name that
    matches none is left to the loader, which reports what it cannot place."""
    integers, shapes = [], []
    for name, (dtype, integer, shape) in found.items():
        named = (name, f"{prefix}.{name}", name.removeprefix(f"{prefix}.")) if prefix else (name,)
        key = next((k for k in named if k in expected), None)
        if key is None:
            continue
        model_dtype, model_shape = expected[key]
        if integer and model_dtype.is_floating_point:
            integers.append(f"{name} ({dtype}; the model holds {str(model_dtype).removeprefix('torch.')})")
        if tuple(shape) != tuple(model_shape):
            shapes.append(f"{name} is {list(shape)} in the file, {list(model_shape)} in the model")
    where = f"checkpoint {path} ({ref.model} step {ref.step})"
    if integers:
        raise CheckpointError(
            f"{where} stores {len(integers)} floating-point parameter(s) as integers, so their bytes would be "
            f"read as integers: {'; '.join(integers[:3])}",
            fix=f"its header declares the wrong dtype: re-save the checkpoint from the model that trained it "
            f"(save_pretrained, or safetensors' save_file), or delete {path.parent} and rebuild it "
            "(`layerlake suite build`) or download it again",
        )
    if shapes:
        raise CheckpointError(
            f"{where}: {len(shapes)} tensor(s) of the weights have another shape than {described}: "
            f"{'; '.join(shapes[:3])}",
            fix=fix,
        )


def header_found(tensors: dict[str, dict]) -> dict[str, tuple[str, bool, tuple]]:
    """``check_weights_file``'s tensors as ``check_weights_fit`` reads them."""
    return {k: (v["dtype"], v["dtype"] in INTEGER_DTYPES, tuple(v["shape"])) for k, v in tensors.items()}


def parameters_expected(model: Any) -> dict[str, tuple[Any, tuple]]:
    """A model's parameters (tied ones under each of their names) as ``check_weights_fit`` reads them."""
    return {name: (p.dtype, tuple(p.shape)) for name, p in model.named_parameters(remove_duplicate=False)}


_CONFIG_PARAMETERS: dict[tuple[str, bool], tuple[dict[str, tuple[Any, tuple]], str]] = {}


def config_parameters(
    folder: Path, trust_remote_code: bool
) -> tuple[dict[str, tuple[Any, tuple]], str] | None:
    """The parameters of the model ``folder``'s config.json describes, built on the meta device (names,
    dtypes and shapes, no memory), and its base model prefix; once per process and config; None when
    that model cannot be built here (the load itself then says why)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        text = (folder / "config.json").read_text()
        key = (text, trust_remote_code)
        if key not in _CONFIG_PARAMETERS:
            config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
            _CONFIG_PARAMETERS.clear()  # one config at a time: a suite's checkpoints share theirs
            _CONFIG_PARAMETERS[key] = parameters_expected(model), model.base_model_prefix or ""
        return _CONFIG_PARAMETERS[key]
    except Exception:  # no or an unreadable config.json, an unknown model type: from_pretrained reports it
        return None


def check_weights_fit_config(ref: CheckpointRef, folder: Path | None) -> None:
    """A Hugging Face checkpoint folder's ``model.safetensors`` fits the model its config.json describes
    (``check_weights_fit``). A folder without that one file (sharded weights, a hub checkpoint not in
    the cache) is left to the loader."""
    path = folder / WEIGHTS_FILE if folder is not None else None
    if path is None or not path.is_file():
        return
    tensors = check_weights_file(path)
    built = config_parameters(folder, ref.trust_remote_code)
    if built is None:
        return
    expected, prefix = built
    check_weights_fit(
        ref, path, header_found(tensors), expected, "the model its config.json describes", prefix=prefix,
        fix="use the config.json the weights were saved with (hidden_size, intermediate_size, "
        "num_attention_heads, vocab_size ...); if it is that one, the file's header is wrong: re-save the "
        "checkpoint from the model that trained it",
    )  # fmt: skip


def hub_snapshot(ref: CheckpointRef) -> Path | None:
    """The hub cache's folder of a hub checkpoint's revision, when its weights file is cached."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(
            ref.location, WEIGHTS_FILE, cache_dir=hub_cache_dir(), revision=ref.revision
        )
    except Exception:  # an odd repo id or revision: nothing cached to check
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def weights_sha256(model) -> str:
    """sha256 over the state dict, tensors in sorted name order: name, dtype, shape, raw bytes.

    Equal hashes mean bit-identical weights; a different dtype is a different identity.
    """
    import torch

    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # the buffer itself: no copy
    return digest.hexdigest()


def select_steps(suite: SuiteConfig, steps_cfg: StepsConfig) -> list[int]:
    """The steps to use: ``steps_cfg.only`` if given, else the named ``subset``, else all, ascending.

    Every step must be in the suite's schedule (``suite.steps``).
    """
    if steps_cfg.only is not None:
        chosen, what = list(steps_cfg.only), "steps.only"
    elif steps_cfg.subset is not None:
        if steps_cfg.subset not in suite.subsets:
            known = ", ".join(suite.subsets) or "(none)"
            raise SuiteError(
                f"suite {suite.name!r} has no step subset {steps_cfg.subset!r}; its subsets are: {known}",
                fix="use steps=all, steps.subset=<one of those>, or steps.only=[...]",
            )
        chosen, what = list(suite.subsets[steps_cfg.subset]), f"subset {steps_cfg.subset!r}"
    else:
        return sorted(set(suite.steps))
    schedule = sorted(set(suite.steps))
    missing = [s for s in chosen if s not in schedule]
    if missing:
        raise SuiteError(
            f"{what} asks for step {missing[0]}, which is not in suite {suite.name!r}'s schedule "
            f"({_nearest_text(missing[0], schedule)})",
            fix="choose steps from the suite's `steps` list",
        )
    return sorted(set(chosen))


def _from_pretrained(ref: CheckpointRef, torch_dtype):
    """The one loader: a local folder or a hub repo at a revision, safetensors or weights-only pickles."""
    from transformers import AutoModelForCausalLM

    if ref.source == "local":
        target, kwargs = ref.location, {"use_safetensors": True}
        weights = local_weights(ref)
        check_weight_files(weights)
        what, fix = str(weights.main), "delete that step folder and rebuild with `layerlake suite build`"
    elif ref.source == "hf":
        target, kwargs = ref.location, {"revision": ref.revision, "cache_dir": hub_cache_dir()}
        local_only, why = hub_local_only()
        if local_only:
            kwargs["local_files_only"] = True
        what = f"{ref.location}@{ref.revision}"
        fix = (
            HUB_FIX if local_only
            else "check the repo and revision exist on the hub; re-download with a clean cache"
        )  # fmt: skip
        if local_only and not cached_revision(ref.location, ref.revision):
            raise CheckpointError(
                f"cannot load checkpoint {what} ({ref.suite}/{ref.model} step {ref.step}): {why}, and "
                f"{ref.revision} of {ref.location} is not in the hub cache {hub_cache_dir()}{_cached_hint(ref)}",
                fix=fix,
            )
    else:
        raise CheckpointError(f"checkpoint {ref.model}@{ref.revision} has unknown source {ref.source!r}",
                              fix="use source local or hf")  # fmt: skip
    try:
        if ref.source == "hf":
            # the revision's weights, downloaded (or read from the cache) and checked before loading
            files = hub_weight_files(ref, local_only)
            if files is not None:
                check_weight_files(files, hub_fix(files))
        return AutoModelForCausalLM.from_pretrained(
            target,
            dtype=torch_dtype,
            trust_remote_code=ref.trust_remote_code,
            weights_only=True,
            output_loading_info=True,
            **kwargs,
        )
    except CheckpointError:
        raise
    except Exception as error:  # safetensors, OSError, hub errors: all mean "this checkpoint is unusable"
        raise CheckpointError(
            f"cannot load checkpoint {what} ({ref.suite}/{ref.model} step {ref.step}): "
            f"{type(error).__name__}: {_first_line(error)}{_cached_hint(ref)}",
            fix=fix,
        ) from error


def hub_weight_files(ref: CheckpointRef, local_only: bool) -> WeightFiles | None:
    """The safetensors files of a hub revision in the hub cache, downloaded unless ``local_only``:
    ``model.safetensors``, else the index and every shard it lists, resolved as ``from_pretrained``
    resolves them (which then finds them cached). None when the revision has neither (or, offline, the
    cache holds neither): ``from_pretrained`` then reads what it finds (a pickle weights-only) or says
    what is missing. A shard the index lists that the revision (or the cache) lacks is a
    ``CheckpointError`` naming it."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    def fetch(name: str) -> Path | None:
        try:
            return Path(hf_hub_download(
                ref.location, name, revision=ref.revision, cache_dir=hub_cache_dir(), local_files_only=local_only,
            ))  # fmt: skip
        except EntryNotFoundError:  # not in the revision, or (offline) not in the cache
            return None

    single = fetch(WEIGHTS_FILE)
    if single is not None:
        return WeightFiles(None, (single,))
    index = fetch(WEIGHTS_INDEX)
    if index is None:
        return None
    fix = hub_fix(WeightFiles(index, ()))
    weight_map = read_index(index, fix)
    shards = []
    for name in shard_names(weight_map):
        shard = fetch(name)
        if shard is None:
            absent = "the hub cache does not hold" if local_only else "the revision does not hold"
            raise missing_shard(index, name, weight_map, f"{absent} ({ref.location}@{ref.revision})", fix)
        shards.append(shard)
    return WeightFiles(index, tuple(shards), weight_map)


def hub_fix(files: WeightFiles) -> str:
    """What to do about a hub revision's broken weights in the cache: delete that revision (its snapshot
    folder is named by its commit) and download it again; a repo whose own files disagree cannot be used."""
    commit = files.main.parent.name
    return (
        f"delete the revision from the hub cache (`hf cache rm {commit}`) and run again to download it afresh; "
        "if the repo's own files are inconsistent, choose other steps (steps.only=[...])"
    )


def model_type_of(ref: CheckpointRef) -> str | None:
    """The ``model_type`` a checkpoint's config.json declares, read without loading its weights; None
    when the config cannot be read here (the task, loading the checkpoint, then says why)."""
    if ref.source == "local":
        path = Path(ref.location) / "config.json"
    elif ref.source == "hf":
        try:
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(
                ref.location, "config.json", revision=ref.revision, cache_dir=hub_cache_dir(),
                local_files_only=hub_local_only()[0],
            ))  # fmt: skip
        except Exception:  # offline and not cached, no such revision: the task reports it
            return None
    else:
        return None
    try:
        return json.loads(path.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def check_loading_info(ref: CheckpointRef, info: dict) -> None:
    """A checkpoint whose weights and config disagree fails, naming the mismatch: weights the config has
    no place for (it declares fewer layers than the file holds) would be silently dropped, and parameters
    the file lacks would be silently initialised at random."""
    unexpected, missing = sorted(info.get("unexpected_keys") or ()), sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(k) for k in info.get("mismatched_keys") or ())
    if not (unexpected or missing or mismatched):
        return
    parts = []
    for what, keys in (
        ("weights the config has no place for", unexpected),
        ("parameters the weights lack", missing),
        ("tensors of another shape", mismatched),
    ):
        if keys:
            parts.append(f"{len(keys)} {what} (e.g. {', '.join(keys[:3])})")
    raise CheckpointError(
        f"checkpoint {ref.stored_location} ({ref.model} step {ref.step}): its config.json and its weights "
        f"disagree: {'; '.join(parts)}",
        fix="use the config.json the weights were saved with (num_hidden_layers, hidden_size ...)",
    )  # fmt: skip


def checkpoint_fingerprint(ref: CheckpointRef) -> dict:
    """For a local checkpoint, the size, mtime and sha256 of every file its rows are made from
    (``checkpoint_files``: the weights, whole or every shard and the index, and config.json), what the
    driver compares to tell whether a committed checkpoint changed on disk; empty for a hub checkpoint
    (its revision names it: the hub changes a revision's files only by a new commit, and suites do not
    move their checkpoint branches)."""
    if ref.source != SuiteSource.local:
        return {}
    try:
        return fingerprint(checkpoint_files(ref))
    except OSError as error:  # unreadable (permissions, an I/O error): named, as check_weights_file does
        where = getattr(error, "filename", None) or ref.location
        raise CheckpointError(
            f"cannot read {where} ({ref.model} step {ref.step}): {error.strerror or type(error).__name__}",
            fix=f"make {where} readable by the user running layerlake (its permissions or owner), or restore it",
        ) from None


def hub_cache_dir() -> str:
    """The hub cache folder: ``$HF_HUB_CACHE`` as set now, else ``huggingface_hub``'s default."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


HUB_FIX = (
    "check the network and HF_ENDPOINT, or download the revisions where the hub is reachable and point "
    "HF_HUB_CACHE at that cache (HF_HUB_OFFLINE=1 then skips the network check)"
)


def hub_endpoint() -> str:
    """The hub's address: ``$HF_ENDPOINT`` as set now, else ``huggingface_hub``'s default."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def hub_local_only() -> tuple[bool, str | None]:
    """``(True, why)`` when loads must read the hub cache only: ``HF_HUB_OFFLINE`` is set (no network
    check at all), or the hub does not answer (checked once per process and endpoint, said once).
    ``(False, None)`` when the hub answers."""
    if hub_offline():
        return True, "HF_HUB_OFFLINE is set"
    why = hub_unreachable(hub_endpoint())
    return (True, why) if why else (False, None)


@functools.cache
def hub_unreachable(endpoint: str) -> str | None:
    """Why the hub at ``endpoint`` cannot be reached (one TCP connection to it, or to the proxy that
    would carry the request), or None when it answers. Cached: a process asks once per endpoint, and
    warns once."""
    url = urllib.parse.urlsplit(endpoint)
    proxy = (
        urllib.request.getproxies().get(url.scheme)
        if not urllib.request.proxy_bypass(url.hostname or "")
        else None
    )
    target = urllib.parse.urlsplit(proxy) if proxy else url
    host, port = target.hostname, target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=HUB_CONNECT_TIMEOUT).close()
    except OSError as error:
        via = f" through the proxy {proxy}" if proxy else ""
        why = f"the hub at {endpoint} is unreachable{via} ({error.strerror or error})"
        log.warning("%s: reading the hub cache only", why)
        return why
    return None


def cached_revision(repo: str, revision: str) -> bool:
    """Whether ``revision`` of model ``repo`` has a snapshot in the hub cache."""
    folder = Path(hub_cache_dir()) / f"models--{repo.replace('/', '--')}"
    ref = folder / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    return (folder / "snapshots" / commit).is_dir()


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set now: load from the cache only."""
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return flag.upper() in ("1", "ON", "YES", "TRUE") if flag else constants.HF_HUB_OFFLINE


def _cached_hint(ref: CheckpointRef) -> str:
    """For hub refs: the nearest revisions in the local cache (all that is reachable offline)."""
    if ref.source != "hf":
        return ""
    steps = cached_hub_steps(ref.location)
    return f"; cached revisions: {_nearest_text(ref.step, steps)}" if steps else ""


def cached_hub_steps(repo: str) -> list[int]:
    """``step<N>`` revisions of ``repo`` present in the local hub cache, ascending."""
    refs_dir = Path(hub_cache_dir()) / f"models--{repo.replace('/', '--')}" / "refs"
    if not refs_dir.is_dir():
        return []
    return sorted(s for s in (_step_of(p.name) for p in refs_dir.iterdir()) if s is not None)


def _step_of(name: str) -> int | None:
    digits = name.removeprefix("step")
    return int(digits) if name.startswith("step") and digits.isdigit() else None


def _nearest_text(step: int, available: Sequence[int], k: int = 3) -> str:
    """``nearest available steps: 96, 128, 160`` (or that none exist)."""
    if not available:
        return "no steps are available"
    i = bisect.bisect_left(available, step)
    window = sorted(available[max(0, i - k) : i + k], key=lambda s: (abs(s - step), s))[:k]
    return "nearest available steps: " + ", ".join(str(s) for s in sorted(window))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else ""
