"""Builds the embedded suite: checks the config, trains the tokenizer once, then each model that is
missing, incomplete (resumed) or built from another config (rebuilt); complete ones are reused.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from layerlake.conf.schema import ModelSpec, SuiteConfig
from layerlake.etl.errors import CheckpointError, SuiteError
from layerlake.etl.suite import corpus, manifest
from layerlake.etl.suite.train import LOSS_FILE, TrainPlan, resume_points, train_model


@dataclass
class ModelJob:
    spec: ModelSpec
    config_hash: str
    action: str  # reuse | build | rebuild | resume | repair
    reason: str
    resume_from: int | None = None  # the checkpoint training continues from; None: from step 0
    repair: frozenset[int] | None = None  # repair: the checkpoints to rewrite (missing or damaged)
    key: str = ""  # the model's folder and suite.json key: its name, or <name>@<variant> for a variant run

    def __post_init__(self) -> None:
        self.key = self.key or self.spec.name


def model_key(spec: ModelSpec, variant: str | None) -> str:
    """The folder a model's checkpoints go to: its name, or ``<name>@<variant>`` for a variant run."""
    return spec.name if not variant else f"{spec.name}@{variant}"


def validate_local_suite(suite: SuiteConfig) -> None:
    """The checks a local suite must pass before anything is trained."""
    train = suite.train
    if not suite.models:
        raise SuiteError(
            f"suite {suite.name!r} has no models", fix="list models under `models:` in its config"
        )
    names = [m.name for m in suite.models]
    if len(set(names)) != len(names):
        raise SuiteError(
            f"suite {suite.name!r} names a model twice: {names}", fix="give each model a unique name"
        )
    steps = list(suite.steps)
    if not steps or steps != sorted(set(steps)) or steps[0] < 0:
        raise SuiteError(
            f"suite {suite.name!r}: steps must be distinct, ascending and >= 0, got {steps}",
            fix="write the schedule as e.g. [0, 1, 2, 4, 8, 16, 32, 64, 96, 128]",
        )
    if steps[-1] != train.max_steps:
        raise SuiteError(
            f"suite {suite.name!r}: the last checkpoint step {steps[-1]} is not train.max_steps={train.max_steps}",
            fix=f"end `steps` with {train.max_steps}, or set suite.train.max_steps={steps[-1]}",
        )
    if suite.tokens_per_step != train.batch_size * train.seq_len:
        raise SuiteError(
            f"suite {suite.name!r}: tokens_per_step={suite.tokens_per_step} but each update trains on "
            f"batch_size x seq_len = {train.batch_size * train.seq_len} tokens",
            fix=f"set suite.tokens_per_step={train.batch_size * train.seq_len}",
        )
    if train.vocab_size <= 257:
        raise SuiteError(
            f"suite {suite.name!r}: vocab_size={train.vocab_size} leaves no room for BPE merges",
            fix="use suite.train.vocab_size >= 300 (256 bytes + 1 special token + merges)",
        )


def selected_models(suite: SuiteConfig, only: list[str] | None) -> list[ModelSpec]:
    """The suite's models, restricted to ``only`` (the top-level ``models=`` override) if given."""
    if only is None:
        return list(suite.models)
    known = {m.name: m for m in suite.models}
    unknown = [name for name in only if name not in known]
    if unknown:
        raise SuiteError(
            f"suite {suite.name!r} has no model {', '.join(map(repr, unknown))}",
            fix=f"use models=[...] with names from: {', '.join(known)}",
        )
    return [known[name] for name in only]


def ensure_tokenizer(root: Path, suite: SuiteConfig, train_text: str, corpus_sha: str, record: dict) -> Path:
    """``<suite>/tokenizer.json``, trained once per (corpus, vocab size) and then reused; trained again
    when the file no longer matches the sha256 recorded for it (training is deterministic, so a damaged
    file comes back as the same bytes and the models built with it are kept)."""
    path = root / manifest.TOKENIZER
    key = manifest.tokenizer_key(suite, corpus_sha)
    if not path.is_file() or record.get("tokenizer_key") != key or not _same_file(path, record):
        corpus.save_tokenizer(corpus.train_tokenizer(train_text, suite.train.vocab_size), path)
    record["tokenizer_key"] = key
    record["tokenizer_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return path


def _same_file(path: Path, record: dict) -> bool:
    recorded = record.get("tokenizer_sha256")
    return recorded is None or hashlib.sha256(path.read_bytes()).hexdigest() == recorded


def plan_jobs(
    root: Path, suite: SuiteConfig, specs: list[ModelSpec], record: dict, corpus_sha: str
) -> list[ModelJob]:
    """Decide for each model: reuse, build, rebuild, resume or repair, with the reason shown to the
    user. The reason says where training starts, and the job starts exactly there."""
    jobs = []
    for spec in specs:
        key = model_key(spec, suite.train.variant)
        digest = manifest.model_config_hash(spec, suite, corpus_sha, record["tokenizer_sha256"])
        entry = record["models"].get(key)
        folder = root / key
        if entry is None or not folder.exists():
            job = ModelJob(spec, digest, "build", "not built yet")
        elif entry["config_hash"] != digest:
            job = ModelJob(spec, digest, "rebuild", "its config changed since it was built")
        else:
            job = _continue(spec, digest, folder, suite.steps, bool(entry.get("complete")))
        job.key = key
        jobs.append(job)
    return jobs


def _continue(spec: ModelSpec, digest: str, folder: Path, steps: list[int], complete: bool) -> ModelJob:
    """The job for a model built with this config: reuse it, repair its damaged or missing checkpoints
    (complete models), or resume its training (interrupted ones), from the newest intact checkpoint
    that has a resume state and comes before the first bad one."""
    bad = _bad_checkpoints(folder, steps)
    complete = complete and (folder / LOSS_FILE).is_file()
    if complete and not bad:
        return ModelJob(spec, digest, "reuse", "complete, config unchanged")
    first_bad = min(bad) if bad else None
    points = [s for s in resume_points(folder) if first_bad is None or s < first_bad]
    start = points[-1] if points else None
    origin = f"from step {start}, its last intact checkpoint" if start is not None else "from step 0"
    problem = "; ".join(bad[s] for s in sorted(bad)[:2]) + (
        f" (and {len(bad) - 2} more)" if len(bad) > 2 else ""
    )
    if complete:
        what = "it" if len(bad) == 1 else f"steps {', '.join(map(str, sorted(bad)))}"
        why = "" if start is not None else " (no resume state is kept once a model is complete)"
        reason = f"{problem}; retraining {origin} to step {max(bad)} to rewrite {what}{why}; the other checkpoints are kept"
        return ModelJob(spec, digest, "repair", reason, start, frozenset(bad))
    if start is None:
        return ModelJob(
            spec,
            digest,
            "resume",
            "interrupted before any intact checkpoint with a resume state: restarting from step 0",
        )
    damaged = f" ({problem})" if bad else ""
    return ModelJob(spec, digest, "resume", f"interrupted; resuming {origin}{damaged}", start)


def run_jobs(
    root: Path, suite: SuiteConfig, jobs: list[ModelJob], record: dict, tokens, progress, tracking=None
) -> list[str]:
    """Train every job that is not a reuse, updating ``suite.json`` before and after each; each model's
    summary line goes to ``progress.finished`` as it ends, and all are returned. ``tracking(job)``
    gives the run a job trains as (a context manager: ``layerlake.etl.track.TrackedRun``), or None; a
    repair is not tracked (its steps were logged)."""
    lines = []
    for job in jobs:
        folder = root / job.key
        if job.action == "reuse":
            continue
        if job.action in ("build", "rebuild") and folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        record["models"][job.key] = {"config_hash": job.config_hash, "complete": False}
        manifest.write(root, record)
        started = time.perf_counter()
        tracker = tracking(job) if tracking is not None and job.repair is None else nullcontext()
        with tracker as run:
            plan = TrainPlan(
                job.spec, suite.train, tuple(suite.steps), folder, tokens, job.config_hash, job.resume_from,
                job.repair, run,
            )  # fmt: skip
            outcome = train_model(plan, progress.callback(job.key, suite.train.max_steps))
        record["models"][job.key] = {
            "config_hash": job.config_hash,
            "complete": True,
            "n_params": outcome.n_params,
            "steps": list(suite.steps),
        }
        manifest.write(root, record)
        resumed = "from step 0" if outcome.resumed_from is None else f"resumed at step {outcome.resumed_from}"
        seconds = f"{time.perf_counter() - started:.0f} s"
        if job.repair is not None:
            rewritten = ", ".join(f"step{s}" for s in sorted(job.repair))
            lines.append(f"{job.key}: rewrote {rewritten}, {resumed}, {seconds}")
        else:
            if job.action == "resume":
                seconds += f", {resumed}"
            lines.append(
                f"{job.key}: loss {outcome.first_loss:.3f} -> {outcome.last_loss:.3f}, "
                f"{outcome.n_params:,} parameters, {seconds}"
            )
        progress.finished(job.key, lines[-1])
    return lines


def _bad_checkpoints(folder: Path, steps: list[int]) -> dict[int, str]:
    """``{step: why}`` for each scheduled checkpoint whose weights file is missing or corrupt."""
    from layerlake.etl.sources import check_weights_file

    bad = {}
    for step in steps:
        try:
            check_weights_file(folder / f"step{step}" / "model.safetensors")
        except CheckpointError as error:
            bad[step] = error.message
    return bad
