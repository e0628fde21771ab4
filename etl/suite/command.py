"""``layerlake suite build`` and ``layerlake suite show``: build (or reuse) the embedded suite, and
print a table of any configured suite.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
import time
from pathlib import Path

from layerlake.conf.schema import Config
from layerlake.etl.errors import SuiteError
from layerlake.etl.progress import TrainJob, TrainProgress, update_cost
from layerlake.etl.suite import build as builder
from layerlake.etl.suite import corpus, manifest
from layerlake.etl.suite.train import LOSS_FILE

log = logging.getLogger(__name__)


def build(settings: Config) -> int:
    """Build the configured local suite under ``<paths.suites>/<suite>/``; reuse what is complete."""
    from rich.console import Console

    suite = settings.suite
    if suite.source != "local":
        raise SuiteError(
            f"suite {suite.name!r} comes from the hub (source={suite.source!r}): hub suites are downloaded "
            "when extracted, not built",
            fix="run `layerlake extract suite="
            + suite.name
            + "` directly, or build a local suite (suite=embedded)",
        )
    builder.validate_local_suite(suite)
    variant = suite.train.variant or sweep_variant()
    if variant:
        settings = dataclasses.replace(
            settings,
            suite=dataclasses.replace(suite, train=dataclasses.replace(suite.train, variant=variant)),
        )
        suite = settings.suite
    specs = builder.selected_models(suite, settings.models)
    console = Console(highlight=False, markup=False)  # names, paths and reasons are data, never markup
    root = Path(settings.paths.suites) / suite.name
    started = time.perf_counter()
    train_text, _ = corpus.split_corpus(corpus.corpus_text())
    corpus_sha = corpus.corpus_sha256()
    record = manifest.read(root)
    record.setdefault("models", {})
    record.update({"suite": suite.name, "format": manifest.FORMAT_VERSION, "corpus_sha256": corpus_sha})
    tokenizer = builder.ensure_tokenizer(root, suite, train_text, corpus_sha, record)
    jobs = builder.plan_jobs(root, suite, specs, record, corpus_sha)
    for job in jobs:
        console.print(f"{job.key}: {job.action} ({job.reason})")
        log.info("%s: %s (%s)", job.key, job.action, job.reason)
    todo = [job for job in jobs if job.action != "reuse"]
    if todo:
        tokens = corpus.encode(tokenizer, train_text)
        with TrainProgress(console, train_jobs(suite, todo), suite.steps, settings.progress) as progress:
            builder.run_jobs(root, suite, jobs, record, tokens, progress, tracking(settings))
    hashes = {name: entry["config_hash"] for name, entry in sorted(record["models"].items())}
    record["suite_hash"] = manifest.suite_hash(hashes)
    manifest.write(root, record)
    verb = "built" if todo else "reused"
    console.print(f"suite {suite.name!r} {verb} at {root} in {time.perf_counter() - started:.0f} s")
    log.info("suite %r %s at %s", suite.name, verb, root)
    return 0


def train_jobs(suite, jobs: list[builder.ModelJob]) -> list[TrainJob]:
    """What the progress display needs of each model to train: its updates, its relative cost per update."""
    out = []
    for job in jobs:
        last = suite.train.max_steps if job.repair is None else max(job.repair)
        updates = last - (job.resume_from or 0)
        out.append(TrainJob(job.key, updates, update_cost(job.spec)))
    return out


def sweep_variant() -> str | None:
    """In a job of a Hydra multirun, a name for the run from the settings its sweep varies
    (``seed2-lr0.001``): each job of ``suite build -m suite.train.seed=1,2,3`` trains its own run into
    its own folder. The swept keys are those given with several values on the command line."""
    from layerlake.etl.track import hydra_context

    context = hydra_context()
    if context.get("job_num") is None:
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    values = {o.key_or_group: o.value() for o in parser.parse_overrides(context.get("overrides", []))}
    parts = [f"{key.split('.')[-1]}{values[key]}" for key in swept_keys(parser) if key in values]
    name = re.sub(r"[^A-Za-z0-9._+-]", "", "-".join(parts))[:60]
    return name or f"job{context['job_num']}"


def swept_keys(parser) -> list[str]:
    """The keys this process's command line sweeps (``key=a,b``, ``key=range(...)``, ``key=choice(...)``),
    in their order there."""
    keys = []
    for arg in sys.argv[1:]:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            override = parser.parse_override(arg)
        except Exception:  # noqa: BLE001 - not an override (a flag's value): not swept
            continue
        if override.is_sweep_override() and override.key_or_group not in keys:
            keys.append(override.key_or_group)
    return keys


def tracking(settings: Config):
    """``job -> TrackedRun``: every model a build trains is a run in the warehouse (its loss, learning rate
    and gradient norm at every update; with ``suite.train.snapshots``, the rows of each checkpoint from
    the live model). The suite's own models are runs ``<suite>.<model>``, the runs their checkpoints are
    extracted into; a variant is ``<suite>.<model>.<variant>``."""
    from layerlake.etl.plan import extract_options
    from layerlake.etl.probes import build_probe
    from layerlake.etl.task import extract_run_id
    from layerlake.etl.track import track

    suite = settings.suite
    probe = build_probe(settings.probe, suite, settings.paths.suites) if suite.train.snapshots else None
    config = {"suite": dataclasses.asdict(suite), "probe": dataclasses.asdict(settings.probe)}

    def start(job):
        base = extract_run_id(suite.name, job.spec.name)
        run_id = f"{base}.{suite.train.variant}" if suite.train.variant else base
        return track(
            None, suite=suite.name, model_name=job.spec.name, run_id=run_id, probe=probe, seed=suite.train.seed,
            config=config, warehouse=settings.paths.warehouse, cadence=list(suite.steps), resume=True,
            options=extract_options(settings), tokens_per_step=suite.tokens_per_step,
        )  # fmt: skip

    return start


def suite_table_rows(settings: Config) -> list[dict]:
    """One row per model of the configured suite: model, parameters, params_label, layers, width,
    heads, checkpoints (built, for local suites), first_loss and last_loss (None for hub suites)."""
    suite = settings.suite
    root = Path(settings.paths.suites) / suite.name
    record = manifest.read(root) if suite.source == "local" else {"models": {}}
    rows = []
    for spec in suite.models:
        row = {
            "model": spec.name,
            "parameters": record["models"].get(spec.name, {}).get("n_params"),
            "params_label": spec.n_params_label,
            "layers": spec.n_layers,
            "width": spec.d_model,
            "heads": spec.n_heads,
            "checkpoints": len(suite.steps),
            "first_loss": None,
            "last_loss": None,
        }
        if suite.source == "local":
            folder = root / spec.name
            row["checkpoints"] = sum(
                (folder / f"step{s}" / "model.safetensors").is_file() for s in suite.steps
            )
            row["first_loss"], row["last_loss"] = _loss_ends(folder / LOSS_FILE)
        rows.append(row)
    return rows


def show(settings: Config) -> int:
    """Print the suite's table (through the one renderer: it fits the terminal, names stay plain text)."""
    import pyarrow as pa
    from rich.console import Console

    from layerlake.core.render import print_table

    suite = settings.suite
    rows = suite_table_rows(settings)
    log.info("suite %s: %d model(s), %d scheduled checkpoints", suite.name, len(rows), len(suite.steps))
    columns = {
        "model": pa.array([r["model"] for r in rows], pa.string()),
        **{k: pa.array([r[k] for r in rows], pa.int64()) for k in ("layers", "width", "heads")},
    }
    if suite.source == "local":  # what was built: hub suites have none of these before extraction
        columns |= {
            "parameters": pa.array([r["parameters"] for r in rows], pa.int64()),
            "built": pa.array([r["checkpoints"] for r in rows], pa.int64()),  # checkpoints on disk
            "first_loss": pa.array([r["first_loss"] for r in rows], pa.float64()),
            "last_loss": pa.array([r["last_loss"] for r in rows], pa.float64()),
        }
    table = pa.table(columns)
    title = f"suite {suite.name} ({suite.source}, {len(suite.steps)} scheduled checkpoints)"
    print_table(table, title, Console(), max_rows=len(rows) or 1, hoist_constants=False)
    return 0


def _loss_ends(path: Path) -> tuple[float | None, float | None]:
    if not path.is_file():
        return None, None
    import pyarrow.parquet as pq

    loss = pq.read_table(path, columns=["loss"]).column("loss").to_pylist()
    return (loss[0], loss[-1]) if loss else (None, None)
