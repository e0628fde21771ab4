"""Track learning dynamics while a model trains: one run per training job, rows taken from the live model.

    import layerlake

    with layerlake.track(model, suite="mine", model_name="gpt-s", probe=token_ids, seed=0) as run:
        for step in range(steps):
            ...                                  # forward, backward, optimizer.step()
            run.log(step, loss=loss.item(), lr=lr)
            run.snapshot(step, model)            # taken only at the cadence's steps (see Cadence)

A snapshot runs the run's fixed probe through the live model and produces exactly the rows ``layerlake
extract`` writes for a checkpoint (activation summaries, Gram sketches, weight and gradient spectra:
``etl.extract.extract_from_model``), leaving the training state as it found it: train/eval mode, every
parameter's ``.grad`` (the optimizer's accumulated gradients), ``requires_grad`` flags and the RNG
states are saved and put back, and no parameter is modified. Rows are committed by a background thread
(Parquet encoding and fsync stay off the training loop), one task per snapshot. A snapshot or commit
that fails never stops the training: it is recorded in the manifest (``failures`` view), counted in
``run.failures``, and reported once on stderr.

Scalars (``log``) are kept in blocks of ``SCALAR_BLOCK`` steps; each block is one task, rewritten as it
fills, so a resumed run (``track(run_id=..., resume=True)``) that logs a step again replaces it instead
of repeating it. Inside a ``@hydra.main`` job the run records the job's config, overrides, sweep folder
and job number by itself. On entry, runs of this host left ``running`` by a process that is gone are
marked ``killed``; on exit the run is ``finished`` (or ``failed`` with the exception), and its small
files are compacted. In a ``torch.distributed`` job every rank tracks the same run (``etl.distributed``:
who writes, ``log(..., reduce=...)``; ``etl.sharded``: snapshots of an FSDP2 model; ``docs/tracking.md``).
"""

from __future__ import annotations

import atexit
import dataclasses
import math
import queue
import sys
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from layerlake.core.errors import ConfigError, LayerlakeError
from layerlake.core.paths import default_warehouse_root
from layerlake.etl.distributed import Group, Reduce
from layerlake.etl.errors import ProbeError, RunFinishedError
from layerlake.etl.plan import CODE_VERSION
from layerlake.etl.scalars import as_number, storable_name, usable_numbers
from layerlake.etl.task import CheckpointRef, ExtractOptions, ProbeBatch
from layerlake.warehouse import schema
from layerlake.warehouse.content import MAX_STEP, SCALARS_BLOCK
from layerlake.warehouse.layout import MAX_RUN_ID, check_name, checkpoint_task_id
from layerlake.warehouse.runs import (
    Run,
    RunKind,
    RunStatus,
    begin_run,
    committed_run,
    end_run,
    mark_killed,
    new_run,
    standing,
)
from layerlake.warehouse.writer import Warehouse, discard

SCALAR_BLOCK = SCALARS_BLOCK  # steps per scalars task: a resumed run rewrites the block it re-enters
# How often the committing thread commits the scalars logged since it last did: a run killed outright (an
# OOM kill, a preemption) loses at most this many seconds of them. Each commit rewrites the open block's
# task whole (one small file and a manifest line), so a shorter interval costs more files until the run
# is compacted.
SCALAR_FLUSH_S = 30.0
LIVE = "live"
_FLUSH = "flush"  # queued by flush(): the committing thread commits the scalars logged since it last did


# --- when to snapshot ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cadence:
    """Which steps a run snapshots: explicit ``steps``, every ``every`` steps, and (``log_spaced``) the
    powers of two below ``log_until`` (Pythia's schedule: 0, 1, 2, 4, ... 512, then every 1000)."""

    steps: frozenset[int] = frozenset()
    every: int | None = None
    log_spaced: bool = False
    log_until: int = 512

    def __str__(self) -> str:
        parts = [f"steps {sorted(self.steps)}"] if self.steps else []
        if self.log_spaced:
            parts.append("powers of two" + (f" to {self.log_until}" if self.log_until < sys.maxsize else ""))
        if self.every is not None:
            parts.append(f"every {self.every} steps")
        return ", ".join(parts) or "none"

    def __contains__(self, step: int) -> bool:
        if step in self.steps:
            return True
        if self.log_spaced and step <= self.log_until and (step == 0 or step & (step - 1) == 0):
            return True
        return self.every is not None and step % self.every == 0

    @classmethod
    def parse(cls, value: Cadence | int | str | Iterable[int] | None) -> Cadence:
        """``Cadence`` from a cadence, ``N`` (every N steps), ``"pythia"``, ``"pythia:N"`` (log-spaced, then
        every N), ``"log"`` (powers of two only), a list of steps, or None (every 256 steps)."""
        if isinstance(value, Cadence):
            return value
        if value is None:
            return DEFAULT_CADENCE
        if isinstance(value, bool):
            raise ConfigError(f"cadence {value!r} is not a cadence", fix=CADENCE_FIX)
        if isinstance(value, int):
            if value < 1:
                raise ConfigError(f"cadence every {value} steps is not possible", fix=CADENCE_FIX)
            return cls(every=value)
        if isinstance(value, str):
            name, _, every = value.partition(":")
            if name == "pythia":
                return cls(every=int(every) if every else 1000, log_spaced=True)
            if name == "log" and not every:
                return cls(log_spaced=True, log_until=sys.maxsize)
            raise ConfigError(f"unknown cadence {value!r}", fix=CADENCE_FIX)
        steps = frozenset(int(s) for s in value)
        if any(s < 0 for s in steps):
            raise ConfigError("cadence steps must be >= 0", fix=CADENCE_FIX)
        return cls(steps=steps)


CADENCE_FIX = 'use an int (every N steps), "pythia", "pythia:N", "log", or a list of steps'
# Measured (benchmarks/track_overhead.py, benchmarks/RESULTS.md): on the embedded models on 2 CPU cores, a
# snapshot with the default options (gradient spectra and the ov gradient included) costs about 7 training
# steps; the time spent in tracking calls is 2.3-3.9% of training at every 256 steps (Hugging Face and
# declared-layout models), 4.5-7.0% at every 128, and more with Pythia's log-spaced schedule early on.
DEFAULT_CADENCE = Cadence(every=256)


# --- the probe a run snapshots through ----------------------------------------------------------------


def live_probe(probe: ProbeBatch | Sequence[Sequence[int]] | Any, rule: str = "last") -> ProbeBatch:
    """A ``ProbeBatch`` from one, or from token ids (a list of equal-length lists or a 2-d tensor), read
    out at the last token of each sequence (the paper's rule) or at every token (``rule="all"``)."""
    if isinstance(probe, ProbeBatch):
        return probe
    from layerlake.core.hashing import stable_hash

    token_ids = probe_token_ids(probe)
    n, length = len(token_ids), len(token_ids[0])
    if rule == "last":
        positions = tuple((i, length - 1) for i in range(n))
    elif rule == "all":
        positions = tuple((i, j) for i in range(n) for j in range(length))
    else:
        raise ConfigError(
            f"probe rule {rule!r} is not last or all", fix="use probe_rule='last' or probe_rule='all'"
        )
    probe_id = stable_hash({"token_ids": token_ids, "rule": rule, "positions": positions})[:16]
    return ProbeBatch(probe_id, "live", token_ids, positions, rule)


PROBE_SHAPE_FIX = "pass probe=tokenizer(texts, ...)['input_ids'] cut to one length, or a ProbeBatch"


def probe_token_ids(probe: Any) -> tuple[tuple[int, ...], ...]:
    """The token ids of a probe given as a 2-d integer tensor or array, or a list of equal-length lists
    of ints; a ``ConfigError`` naming what is wrong otherwise (a float tensor would be cut to integers
    silently, a 1-d one read as one token per sequence)."""
    import numbers

    dtype, ndim = getattr(probe, "dtype", None), getattr(probe, "ndim", None)
    if ndim is not None and ndim != 2:
        raise ConfigError(
            f"a run's probe must be 2-d (sequences x tokens); this one has shape {tuple(probe.shape)}",
            fix="pass token ids as sequences x tokens (ids[None] for one sequence)",
        )
    floating = getattr(dtype, "is_floating_point", False) or getattr(dtype, "is_complex", False)
    if floating or getattr(dtype, "kind", None) in ("f", "c"):  # a torch or a numpy dtype
        raise ConfigError(
            f"a run's probe must be integer token ids; this one is {dtype}",
            fix="pass the tokenizer's input_ids (a long tensor), not embeddings or scores",
        )
    rows = probe.tolist() if hasattr(probe, "tolist") else probe
    try:
        token_ids = tuple(tuple(row) for row in rows)
    except TypeError:
        raise ConfigError(
            "a run's probe must be a list of token-id lists, or a 2-d tensor", fix=PROBE_SHAPE_FIX
        ) from None
    if not token_ids or len({len(r) for r in token_ids}) != 1 or not token_ids[0]:
        raise ConfigError(
            "a run's probe must be token ids of equal length (a list of lists, or a 2-d tensor)",
            fix=PROBE_SHAPE_FIX,
        )
    odd = next(
        (t for row in token_ids for t in row if not isinstance(t, numbers.Integral) or isinstance(t, bool)),
        None,
    )
    if odd is not None:
        raise ConfigError(f"a run's probe must hold integer token ids; it holds {odd!r}", fix=PROBE_SHAPE_FIX)
    return tuple(tuple(int(t) for t in row) for row in token_ids)


# --- the training state a snapshot must leave alone ----------------------------------------------------


@contextmanager
def training_state_kept(model: Any):
    """Put back, after the block: train/eval mode of every module, each parameter's ``.grad`` and
    ``requires_grad``, and the CPU and CUDA RNG states. The parameters themselves are not touched by
    a snapshot (it reads them)."""
    import torch

    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.grad, p.requires_grad) for p in model.parameters()]
    saved_grads = [None if g is None else g.detach().clone() for _, g, _ in params]
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        for module, mode in modes:
            module.training = mode
        for (p, grad, flag), saved in zip(params, saved_grads, strict=True):
            p.requires_grad_(flag)
            if grad is None:
                p.grad = None
            else:
                grad.copy_(saved)  # the very tensor the optimizer holds, with its values back
                p.grad = grad
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


@contextmanager
def gradient_hooks_set_aside(model: Any):
    """Silence, for the block, the hooks a backward would call besides computing gradients: each
    parameter's tensor hooks (``register_hook``: gradient clipping or logging, wandb.watch's histograms)
    and post-accumulate hooks (an optimizer stepping in backward), and every module's backward hooks
    (its own and the global ones). A snapshot's probe backward must not step, clip or log anything of
    training. Forward hooks stay: they can be part of the computation (pruning masks, weight norm), and
    a probe forward is a forward like an evaluation's."""
    from torch.nn.modules import module as torch_module

    dicts = [torch_module._global_backward_hooks, torch_module._global_backward_pre_hooks]
    for p in model.parameters():
        dicts += [p._backward_hooks, p._post_accumulate_grad_hooks]
    for m in model.modules():
        dicts += [m._backward_hooks, m._backward_pre_hooks]
    dicts = [d for d in dicts if d]  # None where a parameter never had a hook
    saved = [dict(d) for d in dicts]
    try:
        for d in dicts:  # values swapped in place: autograd and the users' handles hold these very dicts,
            for key in d:  # and a hook the user removes meanwhile (handle.remove()) stays removed
                d[key] = _ignored_hook
        yield
    finally:
        for d, hooks in zip(dicts, saved, strict=True):
            for key, hook in hooks.items():
                if d.get(key) is _ignored_hook:
                    d[key] = hook


def _ignored_hook(*args: Any, **kwargs: Any) -> None:
    """What a set-aside hook is meanwhile: it changes nothing (None keeps the gradient as it is)."""
    return None


def check_call(model: Any, fitted: Any, probe: ProbeBatch) -> None:
    """For a model read through a layout's ``call`` other than Hugging Face's (nanoGPT and the like), one
    forward of the probe's first sequence, without gradients and with the training state kept, to see
    the call give logits for every token and the model take the probe's length (a table of learned
    positions shorter than it): either would otherwise fail every snapshot. A sharded model is not
    checked here (its forward is a collective)."""
    import torch

    from layerlake.core.choices import ModelCall
    from layerlake.etl.capture import forward
    from layerlake.etl.distributed import is_sharded

    if fitted.layout.call == ModelCall.hf or is_sharded(model):
        return
    device = next(model.parameters()).device
    ids = torch.tensor([probe.token_ids[0]], dtype=torch.long, device=device)  # whole: positions too
    with training_state_kept(model), torch.no_grad():
        model.eval()
        try:
            forward(model, ids, fitted.layout.call, logits=True)
        except (IndexError, RuntimeError, AssertionError, ValueError, TypeError) as error:
            raise ProbeError(
                f"the probe's first sequence ({len(ids[0])} tokens) does not go through "
                f"{type(model).__name__} as its layout calls it ({fitted.layout.call}): "
                f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}",
                fix="use a probe of the model's vocabulary and at most its context length (its learned "
                "positions), and the layout call its forward takes (tokens or tokens_targets)",
            ) from error


def model_dtype_and_device(model: Any) -> tuple[str, str]:
    """The coarsest floating dtype among the model's parameters (what its pass's rounding is; a model
    may keep its norms in float32 beside bfloat16 matrices) and the first parameter's device."""
    import torch

    floating = {p.dtype for p in model.parameters() if p.dtype.is_floating_point}
    first = next(model.parameters())
    dtype = max(floating, key=lambda d: torch.finfo(d).eps) if floating else first.dtype
    return str(dtype).removeprefix("torch."), str(first.device)


# --- the run handle ------------------------------------------------------------------------------------


@dataclass
class TrackedRun:
    """A run being tracked; made by ``track``. Use it as a context manager."""

    warehouse: Warehouse
    run: Run
    probe: ProbeBatch
    options: ExtractOptions
    cadence: Cadence
    tokens_per_step: int | None = None
    compact_on_finish: bool = True
    group: Group | None = None  # the distributed job this process is a rank of (etl.distributed), or None
    reduce: Reduce = Reduce.rank  # how log() records a number under a group, unless a call says otherwise
    quiet: bool = False  # no start and end line on stderr
    failures: list[str] = field(default_factory=list)
    snapshots: list[int] = field(default_factory=list)
    _scalars: dict[int, dict[tuple[int, str, int | None], tuple[float, datetime]]] = field(
        default_factory=dict
    )
    _dirty: set[int] = field(default_factory=set)
    _scalars_lock: threading.Lock = field(default_factory=threading.Lock)  # log() vs the committing thread
    _said: set[str] = field(default_factory=set)  # names whose unusable value was said (left out)
    _said_non_finite: set[str] = field(default_factory=set)  # names whose NaN or infinity was said
    flush_every_s: float = SCALAR_FLUSH_S
    _queue: queue.Queue = field(default_factory=queue.Queue)
    _thread: threading.Thread | None = None
    _reported: bool = False
    _recorded: int = 0  # failures recorded in the manifest (the ``failures`` view), of those in ``failures``
    _finished: bool = False
    _gone: str | None = None  # why the run may no longer be written into (deleted or archived under it)
    _snapshot_steps: set[int] = field(default_factory=set)  # steps a snapshot was taken (or tried) at
    _weight_spectra: Any = None  # etl.extract.WeightSpectraCache, made at the first snapshot
    layout: Any = None  # where the model's sites live (core.layouts.Layout); None: its Hugging Face family's

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def last_step(self) -> int:
        """The last step this process logged or snapshotted (0 before any)."""
        logged = [key[0] for block in self._scalars.values() for key in block]
        return max([*logged, *self.snapshots], default=0)

    @property
    def writes(self) -> bool:
        """Whether this process commits the run's snapshots and status (one process, or the writer rank)."""
        return self.group is None or self.group.writes

    # -- lifecycle ---------------------------------------------------------------------------------

    def __enter__(self) -> TrackedRun:
        return self

    def start_committing(self) -> None:
        """Start the thread that commits what snapshots and ``log`` queue (``track`` does, so a run used
        without ``with`` and ended by ``finish()`` commits alike)."""
        if self.group is None:  # one process: ended at its exit if the program does not end it
            _OPEN_RUNS[id(self)] = self
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._commit_loop, name=f"layerlake-{self.run_id}", daemon=True
            )
            self._thread.start()

    def __exit__(self, kind, error, tb) -> None:
        self.finish(*exit_status(error))

    def finish(self, status: RunStatus = RunStatus.finished, error: str | None = None) -> None:
        """Flush the scalars, wait for every commit, then record the run's end and compact its files.
        Never raises for what could not be stored (a full disk): that is counted in ``failures`` and
        the run ends with one line on stderr saying what was lost. A second call does nothing (the end
        of a ``with`` block after ``run.finish()``)."""
        if self._finished:
            return
        self._finished = True
        _OPEN_RUNS.pop(id(self), None)
        self.flush()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.group is not None:
            status, error = self._end_together(status, error)
            if status is None:
                return  # this rank has nothing to record: the writer does
        try:
            with self.warehouse.lock():  # as every commit: the run must still stand (``standing``)
                gone = self._gone or standing(self.warehouse, self.run)
                if gone is None:
                    self.run = end_run(self.warehouse, self.run, status, error)
            if gone is not None:
                self.run = self.run.ended(status, error)
                self._stopped(gone, "its end")
        except LayerlakeError as failure:  # its row still says running: `layerlake check` will name it killed
            self.run = self.run.ended(status, error)
            self.failures.append(
                f"the run's end ({failure.message}; `layerlake check` will list it as killed)"
            )
        # a rank other than the writer leaves the files to the writer
        if self.compact_on_finish and self.writes and self._gone is None:
            try:
                from layerlake.warehouse.compact import compact

                compact(self.warehouse.root, run_ids=[self.run_id])
            except LayerlakeError as failure:  # compaction is housekeeping: the rows are committed already
                self.failures.append(f"compaction: {failure.message}")
        if self.failures:  # said even with quiet: something the user expects is not stored
            recorded = (
                f"; `select * from failures where run_id = '{self.run_id}'` lists the {self._recorded} recorded"
                if self._recorded
                else ""
            )
            print(
                f"layerlake: run {self.run_id} ended; {status} with {len(self.snapshots)} snapshot(s) in "
                f"{self.warehouse.root}; {len(self.failures)} thing(s) could not be stored or done "
                f"(first: {self.failures[0]}); what was committed is intact{recorded}",
                file=sys.stderr,
            )
        elif not self.quiet:
            print(
                f"layerlake: run {self.run_id} {status}: {len(self.snapshots)} snapshot(s), "
                f"0 failure(s), in {self.warehouse.root}",
                file=sys.stderr,
            )

    def _end_together(self, status: RunStatus, error: str | None) -> tuple[RunStatus | None, str | None]:
        """How a rank of a distributed job ends the run. A rank that fails records the run failed itself
        (the writer may be waiting in a collective that never completes). On a normal end the ranks meet,
        so the writer marks the run finished only once every rank's rows are committed; a rank gone
        before that leaves the run failed. None: this rank records nothing."""
        from layerlake.etl.distributed import barrier

        rank = self.group.rank
        if status != RunStatus.finished:
            return status, f"rank {rank}: {error}"
        try:
            barrier(self.group)
        except Exception as failure:  # noqa: BLE001 - the process group is broken: a rank died
            said = committed_run(self.warehouse, self.run_id)
            if said is not None and said.status != RunStatus.running:
                return None, None  # the rank that failed has said why
            return RunStatus.failed, f"rank {rank}: another rank ended without finishing ({failure})"
        return (status, error) if self.writes else (None, None)

    # -- scalars -----------------------------------------------------------------------------------

    def log(
        self,
        step: int,
        values: Mapping[str, Any] | None = None,
        /,
        reduce: Reduce | str | None = None,
        **scalars: Any,
    ) -> None:
        """Record numbers for ``step``: ``run.log(step, loss=..., lr=...)``, or any names at all (``step``,
        ``reduce``, ``train/loss``) as a mapping, ``run.log(step, {"step": 7, "train/loss": 0.5})``. Each
        value must be one number (``etl.scalars``); NaN and infinity are stored as they are (a diverged
        loss is a finding), said once per name. Committed by the committing thread within
        ``flush_every_s`` seconds (and at each snapshot, ``wait`` and the end).

        In a distributed job (``etl.distributed``) ``reduce`` says how: ``"rank"`` (the run's default)
        stores this rank's own values with its rank; ``"mean"``, ``"sum"``, ``"min"`` or ``"max"``
        combines them over the ranks (every rank must log the same names at this step) and stores them
        once, as the run's; ``"writer"`` stores the writer's values as the run's and nothing from the
        others. In one process the values are the run's and ``reduce`` changes nothing."""
        self._check_open("log")
        how = Reduce.parse(reduce, "reduce") if reduce is not None else self.reduce
        step = checked_step(step, "log")
        named = {**(values or {}), **scalars}
        numbers = {checked_name(name, step): checked_number(name, v, step) for name, v in named.items()}
        rank = None
        if self.group is not None and how == Reduce.rank:
            rank = self.group.rank
        elif self.group is not None and how == Reduce.writer:
            if not self.writes:
                return
        elif self.group is not None:
            from layerlake.etl.distributed import reduce as over_ranks

            numbers = over_ranks(self.group, step, numbers, how)
            if not self.writes:
                return
        self._keep(step, numbers, rank)

    def log_values(self, step: int, values: Mapping[str, Any], reduce: Reduce | str | None = None) -> None:
        """``log`` for what a library hands over (W&B-style ``log``, Accelerate, Lightning, the Trainer):
        its numbers are logged; any other value (a bool, a string, a dict, several elements, an int past a
        float's range) is left out, said once per name, and never raises."""
        numbers = usable_numbers(values, self._said)
        if numbers:
            self.log(step, numbers, reduce=reduce)

    def _keep(self, step: int, numbers: dict[str, float], rank: int | None) -> None:
        """Put the numbers in their block, for the committing thread to commit."""
        now = datetime.now(timezone.utc)
        for name, number in numbers.items():
            if not math.isfinite(number) and name not in self._said_non_finite:
                self._said_non_finite.add(name)
                print(
                    f"layerlake: run {self.run_id} logged {name} = {number} at step {step} (stored; later "
                    f"non-finite values of {name} are stored without a word)",
                    file=sys.stderr,
                )
        index = int(step) // SCALAR_BLOCK
        with self._scalars_lock:
            block = self._block(step)
            for name, number in numbers.items():
                block[(int(step), name, rank)] = (number, now)
            self._dirty.add(index)
            complete = len(self._dirty) > 1  # a block is complete once a later one starts
        if complete:
            self.flush()

    def _block(self, step: int) -> dict:
        index = int(step) // SCALAR_BLOCK
        if index not in self._scalars:
            self._scalars[index] = self._stored_block(index)
        return self._scalars[index]

    def _stored_block(self, index: int) -> dict:
        """The block's scalars already committed (a resumed run keeps them, and rewrites what it re-logs)."""
        entry = self.warehouse.committed().get(self._scalars_task(index))
        if entry is None:
            return {}
        from layerlake.warehouse.manifest import read_task_rows

        found = {}
        for f in entry.files:
            for row in read_task_rows(self.warehouse.root, f).to_pylist():
                found[(row["step"], row["name"], row["rank"])] = (row["value"], row["logged_at"])
        return found

    def flush(self) -> None:
        """Have the committing thread commit every block logged since it last did (without waiting)."""
        self._queue.put(_FLUSH)

    def _commit_scalars(self) -> None:
        """On the committing thread: commit each block logged since the last time, whole. A block is one
        task (``scalars_task_id``), so committing it again replaces its rows, never adds to them."""
        with self._scalars_lock:
            dirty, self._dirty = sorted(self._dirty), set()
            blocks = {index: sorted(self._scalars[index].items(), key=_scalar_order) for index in dirty}
        for index, items in blocks.items():
            rows = [
                {"step": s, "name": n, "value": v, "logged_at": t, "rank": r} for (s, n, r), (v, t) in items
            ]
            table = pa.Table.from_pylist(rows, schema=schema.SCALARS.arrow_schema())
            self._commit(self._scalars_task(index), {"scalars": table}, {"kind": "scalars", "block": index})

    def _scalars_task(self, index: int) -> str:
        """The task of one block: the writer's (the run's values and its own), or a rank's own."""
        return scalars_task_id(self.run_id, index, None if self.writes else self.group.rank)

    # -- snapshots ---------------------------------------------------------------------------------

    def due(self, step: int) -> bool:
        return step in self.cadence

    def snapshot(self, step: int, model: Any, force: bool = False) -> bool:
        """At a step of the cadence (or with ``force``), take the run's rows from the live ``model`` and
        queue their commit; returns whether a snapshot was taken. Raises only for a ``step`` that is no
        step (``checked_step``); a failure to take the snapshot is recorded and training goes on."""
        step = checked_step(step, "snapshot")
        self._check_open("snapshot")
        if not self.probe.probe_id or not (force or self.due(step)) or step in self._snapshot_steps:
            return False  # a run without a probe records scalars only; a step is snapshotted once
        from layerlake.etl.distributed import is_sharded, unwrap

        model = unwrap(model)  # DDP's module: the replica every rank holds alike
        sharded = self.group is not None and is_sharded(model)
        if not (sharded or self.writes):
            return False  # a replicated model is snapshotted by the writer alone
        self._snapshot_steps.add(step)  # tried once: a failed snapshot is recorded, not retried at its step
        try:
            taken = self.take(step, model, sharded)
        except Exception as error:  # noqa: BLE001 - a snapshot must never stop the training
            self._fail(step, error)
            return False
        self.snapshots.append(step)
        if taken is not None:
            self.flush()
            self._queue.put((self.task_id(step), *taken))
        return True

    def task_id(self, step: int) -> str:
        return checkpoint_task_id(
            self.run.suite, self.run.model, self.run_id, f"step{step}", self.probe.probe_id
        )

    def take(self, step: int, model: Any, sharded: bool = False) -> tuple[dict[str, pa.Table], dict] | None:
        """The rows of one snapshot, on this thread, with the training state kept. A ``sharded`` model
        (``etl.sharded``) is snapshotted by every rank at once; the ranks that do not write get None."""
        import time

        from layerlake.etl.extract import WeightSpectraCache, extract_from_model
        from layerlake.etl.sources import weights_sha256

        started = time.perf_counter()
        ref, options = self.snapshot_ref(step), self.snapshot_options(model)
        fitted = self.fitted(model)
        with training_state_kept(model), gradient_hooks_set_aside(model):
            if sharded:  # every rank gathers and runs the probe; the writer computes the rows
                from layerlake.etl.sharded import snapshot_sharded

                digest, tables, timings = snapshot_sharded(
                    model, ref.step, self.probe, options, self.writes, fitted
                )
            else:
                digest = weights_sha256(model)
                if self._weight_spectra is None:
                    self._weight_spectra = WeightSpectraCache(kept=1)
                tables, timings = extract_from_model(
                    model, ref, digest, self.probe, options, self._weight_spectra, fitted, live=True
                )
        if not self.writes:
            return None
        return self.package(ref, options, model, digest, tables, timings, started, fitted)

    def fitted(self, model: Any) -> Any:
        """The run's layout fitted to ``model`` (``etl.layouts.fit``)."""
        from layerlake.etl.layouts import fit

        return fit(model, self.layout)

    def snapshot_ref(self, step: int) -> CheckpointRef:
        return CheckpointRef(
            self.run.suite, self.run.model, int(step), f"step{step}",
            int(step) * (self.tokens_per_step or 0), LIVE, self.run_id, run_id=self.run_id,
        )  # fmt: skip

    def snapshot_options(self, model: Any) -> ExtractOptions:
        """The run's options at the model's own dtype and device (a snapshot never casts or moves it)."""
        dtype, device = model_dtype_and_device(model)
        return dataclasses.replace(self.options, dtype=dtype, device=device, torch_threads=None)

    def package(
        self, ref: CheckpointRef, options: ExtractOptions, model: Any, digest: str,
        tables: dict[str, pa.Table], timings: dict[str, float], started: float, fitted: Any = None,
    ) -> tuple[dict[str, pa.Table], dict]:  # fmt: skip
        """A snapshot's tables with its ``checkpoints`` row, and its manifest meta."""
        import time

        from layerlake.etl.worker import checkpoint_row

        n_params = sum(p.numel() for p in model.parameters())  # a DTensor counts its whole shape
        tables["checkpoints"] = checkpoint_row(
            ref, self.task_id(ref.step), self.probe.probe_id, getattr(model, "config", None), digest, n_params,
            fitted if fitted is not None else self.fitted(model),
        )  # fmt: skip
        timings["total"] = time.perf_counter() - started
        meta = {
            "kind": "extract", "revision": ref.revision, "step": ref.step, "tokens_seen": ref.tokens_seen,
            "source": LIVE, "location": self.run_id, "probe_id": self.probe.probe_id,
            "config_hash": options.config_hash(), "weights_sha256": digest, "timings": timings,
            "code_version": CODE_VERSION,
        }  # fmt: skip
        return tables, meta

    # -- the committing thread -----------------------------------------------------------------------

    def wait(self) -> None:
        """Block until every snapshot queued and every number logged so far is committed (or recorded
        failed); at once after the end (nothing is left to commit, and no thread to commit it)."""
        if self._finished or self._thread is None:
            return
        self.flush()
        self._queue.join()

    def _commit_loop(self) -> None:
        """The committing thread: each queued snapshot, and the scalars at each ``flush`` and at least
        every ``flush_every_s`` seconds while numbers are logged (training never waits for it)."""
        flushed = time.monotonic()  # the period is read at least every second: a run may change it later
        while True:
            wait = min(1.0, flushed + self.flush_every_s - time.monotonic())
            try:
                item = self._queue.get(timeout=max(0.0, wait))
            except queue.Empty:
                if time.monotonic() < flushed + self.flush_every_s:
                    continue
                item = _FLUSH  # the timer (nothing was queued: no task_done)
            else:
                try:
                    if item is None:
                        return
                    if item is not _FLUSH:
                        self._commit(*item)
                    if item is _FLUSH or time.monotonic() >= flushed + self.flush_every_s:
                        self._commit_scalars_recorded()
                        flushed = time.monotonic()
                finally:
                    self._queue.task_done()  # after the commit: wait() returns once it is done
                continue
            self._commit_scalars_recorded()
            flushed = time.monotonic()

    def _commit_scalars_recorded(self) -> None:
        """``_commit_scalars``, its failure recorded: the committing thread must outlive anything one
        batch of numbers does (a name no Parquet file can hold), or every later commit would be lost."""
        try:
            self._commit_scalars()
        except Exception as error:  # noqa: BLE001 - recorded; the run's end line says it
            self._fail(None, error, f"scalars.{self.run_id}")

    def _commit(self, task_id: str, tables: dict[str, pa.Table], meta: dict) -> None:
        """Commit one task of the run, unless the run no longer stands: asked under the writer lock right
        before the manifest line (``standing``), so a run deleted or archived while it trains (``layerlake
        runs delete --force``, from another host) is never written into again: nothing of it comes back
        and nothing of it shows half archived."""
        try:
            prepared = self.warehouse.prepare(
                task_id, self.run.suite, self.run.model, tables, meta, run_id=self.run_id
            )
            with self.warehouse.lock():
                gone = self._gone or standing(self.warehouse, self.run)
                if gone is None:
                    self.warehouse.publish([prepared])
            if gone is not None:
                discard(prepared[1])
                self._stopped(gone, task_id)
        except Exception as error:  # noqa: BLE001 - a failed commit is recorded, the training goes on
            self._fail(meta.get("step"), error, task_id)

    def _stopped(self, why: str, what: str) -> None:
        """The run was deleted or archived under it: ``what`` is not stored, and neither is anything
        later (said once on stderr, counted in ``failures``; nothing is recorded in the manifest)."""
        if self._gone is None:
            self._gone = why
            print(
                f"layerlake: run {self.run_id} was {why} in {self.warehouse.root} while it trained; nothing "
                "more of it is stored (training goes on)",
                file=sys.stderr,
            )
        self.failures.append(f"{what}: not stored, the run was {why}")

    def _fail(self, step: int | None, error: BaseException, task_id: str | None = None) -> None:
        text = error.message if isinstance(error, LayerlakeError) else f"{type(error).__name__}: {error}"
        self.failures.append(f"step {step}: {text}" if step is not None else f"{task_id}: {text}")
        meta = {"kind": "snapshot", "step": step, "traceback": "".join(traceback.format_exception(error))}
        with suppress(Exception):  # nothing more can be recorded; the report below still says it
            if self._gone is None:  # a run deleted or archived under it gets no failure entries either
                self.warehouse.record_failure(
                    task_id or self.task_id(step or 0),
                    self.run.suite,
                    self.run.model,
                    text,
                    meta,
                    run_id=self.run_id,
                )
                self._recorded += 1
        what = (
            f"snapshot of run {self.run_id} at step {step}"
            if step is not None
            else f"commit of task {task_id} of run {self.run_id}"
        )
        self._report(f"layerlake: {what} failed ({text}); training goes on")

    # -- integrations ----------------------------------------------------------------------------------

    def trainer_callback(self) -> Any:
        """A ``transformers.TrainerCallback`` for ``Trainer(callbacks=[run.trainer_callback()])``
        (``etl.integrations.transformers``)."""
        from layerlake.etl.integrations.transformers import LayerlakeCallback

        return LayerlakeCallback(self)

    def hook(self, model: Any) -> Callable[[int, dict[str, float]], None]:
        """``hook(step, {"loss": ...})`` for a plain loop: logs and snapshots at the cadence."""
        return after_step(self, model)

    def _check_open(self, call: str) -> None:
        if self._finished:
            raise RunFinishedError(
                f"{call}() on run {self.run_id}, which has finished ({self.run.status}); nothing after a "
                "run's end is stored",
                fix=f"call {call}() before run.finish() (or the end of its `with` block), or start another "
                "run (layerlake.track(...) or layerlake.init(...))",
            )

    def _report(self, text: str) -> None:
        """Say the first failure on stderr at once; later ones are counted and summed up at the end."""
        if not self._reported:
            print(text + " (later failures are summed up when the run ends)", file=sys.stderr)
        self._reported = True


def checked_step(step: Any, call: str) -> int:
    """``step`` as an int the warehouse stores (0..``MAX_STEP``); a ``ConfigError`` at the call otherwise,
    before anything is kept, so a bad step never reaches (and never loses) the run's stored rows."""
    value = step.item() if hasattr(step, "item") and not isinstance(step, (int, float)) else step
    if isinstance(value, bool) or not isinstance(value, int):
        if not (isinstance(value, float) and value.is_integer()):
            raise ConfigError(
                f"{call}() got step {str(step)[:40]!r}, which is not a whole number",
                fix="pass the training step as an int (0, 1, 2, ...)",
            )
        value = int(value)
    if not 0 <= value <= MAX_STEP:
        raise ConfigError(
            f"{call}() got step {value}, outside the steps the warehouse stores (0..{MAX_STEP})",
            fix="pass the training step (a count from 0), not a timestamp or a token count",
        )
    return value


def checked_name(name: Any, step: int) -> str:
    """A logged value's name as stored (``etl.scalars.storable_name``); a ``ConfigError`` naming it
    otherwise, before it reaches a block whose every later commit it would fail."""
    text = storable_name(name)
    if text is None:
        raise ConfigError(
            f"log() at step {step}: the name {name!r} is not text UTF-8 can encode (a lone surrogate)",
            fix="log under a name of plain text (bytes decoded as UTF-8 with replacement characters)",
        )
    return text


def checked_number(name: str, value: Any, step: int) -> float:
    """A logged value as a float (a Python, numpy or torch number of one element: ``etl.scalars``); a
    ``ConfigError`` naming it and why otherwise."""
    number, why = as_number(value)
    if number is None:
        raise ConfigError(
            f"log() at step {step}: {name} = {str(value)[:40]!r} is not a number ({why})",
            fix="log numbers only (a float, an int, or a one-element tensor: loss.item()); a library's "
            "values go through run.log_values(step, values), which leaves the others out",
        )
    return number


_OPEN_RUNS: weakref.WeakValueDictionary[int, TrackedRun] = weakref.WeakValueDictionary()


def _end_open_runs_at_exit() -> None:
    """At the process's exit, end each run of this process still open (``track()`` used without ``with``
    and never finished): what it logged and snapshotted is committed, and it ends finished, or failed
    when an exception ended the program. A distributed run is left to its ranks (its end is collective)."""
    status, error = exit_status(getattr(sys, "last_value", None))
    for run in list(_OPEN_RUNS.values()):
        run.finish(status, error)


atexit.register(_end_open_runs_at_exit)


def exit_status(error: BaseException | None) -> tuple[RunStatus, str | None]:
    """How a run ends after ``error`` (None: no exception): finished, also for ``SystemExit`` with code 0
    or None (``sys.exit()``, a script's normal exit); failed with the error's text otherwise
    (``sys.exit(1)``, ``sys.exit("message")``, an exception, Ctrl-C)."""
    if error is None or (isinstance(error, SystemExit) and error.code in (0, None)):
        return RunStatus.finished, None
    return RunStatus.failed, f"{type(error).__name__}: {error}"


def scalars_task_id(run_id: str, block: int, rank: int | None = None) -> str:
    """``scalars.<run>.<block>``, or ``...<block>.rank<r>`` for what a rank other than the writer logged."""
    return f"scalars.{run_id}.{block}" + ("" if rank is None else f".rank{rank}")


def _scalar_order(item: tuple) -> tuple:
    (step, name, rank), _ = item
    return (step, name, -1 if rank is None else rank)


# --- track() ---------------------------------------------------------------------------------------------


def track(
    model: Any = None,
    *,
    suite: str = "tracked",
    model_name: str | None = None,
    run_id: str | None = None,
    probe: Any = None,
    probe_rule: str = "last",
    seed: int | None = None,
    config: Any = None,
    warehouse: str | Path | None = None,
    cadence: Cadence | int | str | Iterable[int] | None = None,
    options: ExtractOptions | None = None,
    tokens_per_step: int | None = None,
    resume: bool = False,
    compact: bool = True,
    layout: Any = None,
    reduce: Reduce | str = Reduce.rank,
    writer_rank: int = 0,
    distributed: bool = True,
    quiet: bool = False,
) -> TrackedRun:
    """Start (or with ``resume``, continue) a tracked run; use the result as a context manager.

    ``model`` names the run's model by its class when ``model_name`` is not given. ``probe`` is the fixed
    batch every snapshot reads (token ids or a ``ProbeBatch``); without one, the run records scalars
    only. ``options`` are the extraction options (default: those of ``layerlake extract``, gradients on).
    With ``compact`` (the default), the run's small files are merged when it finishes. ``layout`` says
    where the model's blocks, attention and MLP live (a ``Layout``, a preset name such as ``"nanogpt"``, or
    a YAML file; ``docs/families.md``); None: the Hugging Face family's preset. A layout that does not fit
    the model fails here, naming the pattern that matched nothing.
    In a distributed job every rank calls ``track`` alike: the ``writer_rank`` starts the run and the
    others join it (``etl.distributed``); ``reduce`` is how ``log`` records numbers there unless a call says
    otherwise. With ``distributed=False`` this process alone tracks the run whatever job it belongs to (a
    tracker that a library calls on its main process only, as Accelerate does). A line on stderr says where
    the run goes when it starts and what it took when it ends (not with ``quiet``, and only from the writer).
    """
    from layerlake.etl.distributed import agree, current, model_class_name, unwrap

    group = current(writer_rank) if distributed else None
    root = Path(warehouse) if warehouse is not None else default_warehouse_root()
    name = model_name or (model_class_name(model) if model is not None else "model")
    store = Warehouse(root)
    hydra = hydra_context()
    batch = live_probe(probe, probe_rule) if probe is not None else None
    options = options or ExtractOptions(gradients=True)
    if layout is not None:
        from layerlake.core.layouts import load_layout

        layout = load_layout(layout)
    if batch is not None and model is not None:
        from layerlake.etl.extract import check_options

        fitted = check_options(options, batch, unwrap(model), layout)  # what cannot work fails now
        check_call(unwrap(model), fitted, batch)

    def start() -> Run:  # the writer's part: the run's row and its probe's, in one manifest line
        from layerlake.etl.probes import probe_row

        store.check_version()
        mark_killed(store)
        chosen = run_id or new_run_id(name, hydra)
        for kind, value in (("suite", suite), ("model", name), ("run id", chosen)):
            check_name(kind, value)
        if len(chosen) > MAX_RUN_ID:  # its tags, notes and scalars' task ids would pass MAX_NAME
            raise ConfigError(
                f"run id {chosen!r} has {len(chosen)} characters; a run id has at most {MAX_RUN_ID}",
                fix=f"pass a shorter run_id (or model_name: an id made from it keeps {MAX_RUN_ID - 24} of it)",
            )
        run = new_run(
            chosen, suite, name, RunKind.train, config if config is not None else hydra.get("config", {}), seed=seed,
            overrides=tuple(hydra.get("overrides", ())), sweep_dir=hydra.get("sweep_dir"), job_num=hydra.get("job_num"),
            probe_id=batch.probe_id if batch else None,
        )  # fmt: skip
        return begin_run(store, run, probe_row(batch) if batch is not None else None, resume=resume)

    run = start() if group is None else agree(group, start)  # every rank: the writer's run
    tracked = TrackedRun(
        store, run, batch or ProbeBatch("", "", (), (), "last"), options,
        Cadence.parse(cadence) if batch is not None else Cadence(), tokens_per_step, compact,
        group, Reduce.parse(reduce, "reduce"), quiet,
    )  # fmt: skip
    tracked.layout = layout
    tracked.start_committing()
    if tracked.writes and not quiet:
        ranks = f", {group.world} ranks" if group is not None else ""
        what = f"snapshots at {tracked.cadence}" if batch is not None else "scalars only (no probe)"
        print(
            f"layerlake: run {run.run_id} started ({suite}/{name}{ranks}), {what}, in {store.root}",
            file=sys.stderr,
        )
    return tracked


def new_run_id(model: str, hydra: dict) -> str:
    """``<model>-<UTC time>-<random>``, or ``<model>-job<N>-...`` in a Hydra multirun."""
    import uuid

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    job = f"-job{hydra['job_num']}" if hydra.get("job_num") is not None else ""
    suffix = f"{job}-{stamp}-{uuid.uuid4().hex[:4]}"
    return model[: MAX_RUN_ID - len(suffix)] + suffix  # a long model name is cut, never the time


def hydra_context() -> dict[str, Any]:
    """Inside a ``@hydra.main`` job: its composed config, overrides, sweep folder and job number. Outside
    one (including after Hydra's compose API, which leaves a config without a job's runtime), nothing."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf
    except ImportError:
        return {}
    if not HydraConfig.initialized():
        return {}
    hydra = HydraConfig.get()
    output_dir = OmegaConf.select(hydra, "runtime.output_dir", default=None, throw_on_missing=False)
    if not output_dir:
        return {}
    out: dict[str, Any] = {"overrides": list(hydra.overrides.task)}
    if str(hydra.mode) == "RunMode.MULTIRUN":
        out["sweep_dir"] = str(hydra.sweep.dir)
        out["job_num"] = int(hydra.job.num)
    saved = Path(output_dir) / (hydra.output_subdir or ".hydra") / "config.yaml"
    if hydra.output_subdir is not None and saved.is_file():
        out["config"] = OmegaConf.to_container(OmegaConf.load(saved), resolve=False)
    return out


# --- callbacks ---------------------------------------------------------------------------------------------


def after_step(run: TrackedRun, model: Any) -> Callable[[int, dict[str, float]], None]:
    """The hook for a plain PyTorch loop: call ``hook(step, {"loss": ..., "lr": ...})`` after each
    ``optimizer.step()``; it logs the numbers and snapshots at the run's cadence."""

    def hook(step: int, scalars: dict[str, float] | None = None) -> None:
        if scalars:
            run.log(step, **scalars)
        run.snapshot(step, model)

    return hook


__all__ = ["Cadence", "TrackedRun", "after_step", "live_probe", "track"]
