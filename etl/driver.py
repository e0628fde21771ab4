"""The extraction driver: plans tasks, skips committed ones, runs the rest, commits each as it arrives.

Workers return Arrow tables and never write; the driver commits each task through the warehouse's
writer (``warehouse.writer.Warehouse``, the one home of writing), or records the task's failure and
goes on. Runs and probe batches are recorded through ``warehouse.runs``, as tracking records them.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa

from layerlake.conf.schema import Config, ModelSpec
from layerlake.core.choices import SuiteSource
from layerlake.etl.checkpoint_files import unchanged
from layerlake.etl.downloads import HubDownloads
from layerlake.etl.errors import CheckpointError, ExtractionError
from layerlake.etl.executors import Outcome, make_executor
from layerlake.etl.plan import Plan, make_plan
from layerlake.etl.progress import ExtractProgress, Throughput, checkpoint_cost
from layerlake.etl.sources import checkpoint_files, local_weights
from layerlake.etl.task import ExtractTask, extract_run_id
from layerlake.warehouse.errors import WarehouseError
from layerlake.warehouse.manifest import CommitEntry
from layerlake.warehouse.runs import (
    Run,
    RunKind,
    RunStatus,
    begin_run,
    commit_probe,
    committed_run,
    end_run,
    new_run,
    refuse_archived,
)
from layerlake.warehouse.writer import Warehouse


@dataclass
class ExtractReport:
    planned: int = 0
    skipped: int = 0
    replaced: int = 0  # committed before with other options or from other files: extracted again
    changed: int = 0  # of those replaced, the checkpoints whose files (weights, config.json) changed since
    committed: list[str] = field(default_factory=list)  # "model step"
    failed: list[tuple[str, str]] = field(default_factory=list)  # ("model step", error)
    duplicates: list[tuple[str, int, int]] = field(default_factory=list)  # (model, step, same-as step)
    resubmitted: int = 0  # tasks handed to another worker after their worker or node died
    throughput: Throughput | None = None  # the rate of the tasks this run ran, and the time of what is left
    interrupted: bool = False  # stopped by the user (Ctrl-C) before every task had run

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted


def task_label(task: ExtractTask) -> str:
    return f"{task.ref.model} {task.ref.revision}"


def task_meta(task: ExtractTask) -> dict:
    ref = task.ref
    return {
        "kind": "extract",
        "revision": ref.revision,
        "step": ref.step,
        "tokens_seen": ref.tokens_seen,
        "source": str(ref.source),
        "location": ref.stored_location,
        "probe_id": task.probe.probe_id,
        "config_hash": task.options.config_hash(),
        "code_version": task.code_version,
    }


def start_runs(warehouse: Warehouse, plan: Plan, settings: Config) -> dict[str, Run]:
    """The extraction run of every planned model, committed as running (started_at kept from before),
    with its probe batch's row. A model whose run was tracked while it trained (``suite build``) keeps
    that run as it is: its checkpoints' rows join it (and its probe batch's row is added if missing)."""
    from layerlake.etl.probes import probe_row

    config = {"suite": dataclasses.asdict(settings.suite), "probe": dataclasses.asdict(settings.probe),
              "extract": dataclasses.asdict(settings.extract)}  # fmt: skip
    probe = probe_row(plan.probe)
    runs = {}
    for model in plan.models:
        run_id = extract_run_id(plan.suite, model)
        before = committed_run(warehouse, run_id)
        if before is not None and before.kind != RunKind.extract:
            commit_probe(warehouse, run_id, plan.suite, model, probe)
            continue
        run = new_run(run_id, plan.suite, model, RunKind.extract, config, probe_id=plan.probe.probe_id)
        runs[model] = begin_run(warehouse, run, probe)
    return runs


def end_runs(
    warehouse: Warehouse, runs: dict[str, Run], report: ExtractReport, not_run: Counter | None = None
) -> None:
    """Each extraction run as finished, or failed naming its failed checkpoints and, after Ctrl-C, how
    many of its checkpoints did not run (``not_run``: per model)."""
    failed: dict[str, list[str]] = {}
    for model, n in (not_run or {}).items():
        if n:
            failed[model] = [f"interrupted (Ctrl-C) before {n} checkpoint(s) ran: run the extraction again"]
    for label, error in report.failed:
        failed.setdefault(label.split(" ")[0], []).append(f"{label}: {error}")
    for model, run in runs.items():
        errors = failed.get(model)
        end_run(
            warehouse,
            run,
            RunStatus.failed if errors else RunStatus.finished,
            "; ".join(errors or ()) or None,
        )


def end_runs_after(warehouse: Warehouse, runs: dict[str, Run], error: BaseException) -> None:
    """Each extraction run as failed with ``error``, which stopped the extraction; if even that cannot be
    written (a full disk), the runs stay as they are (readers show them killed) and ``error`` is what is
    raised."""
    stopped = f"the extraction stopped: {type(error).__name__}: {error}"
    for run in runs.values():
        try:
            end_run(warehouse, run, RunStatus.failed, stopped)
        except Exception:  # noqa: BLE001 - the first error is the one to report
            return


class WeightRows:
    """Which committed task holds each checkpoint's weight rows (``spectra`` and ``matrix_stats`` with
    tensor = 'weight': they depend on the weights, not on the probe). A checkpoint extracted through
    several probes stores them once, in the first of its tasks committed; the others hold only what
    their probe gives (activations, sketches, gradients), so no key is stored twice."""

    def __init__(self, committed: dict[str, CommitEntry]) -> None:
        self.holders: dict[tuple, str] = {}
        for entry in committed.values():
            self.add(entry)

    def add(self, entry: CommitEntry) -> None:
        meta = entry.meta
        holds = meta.get("weight_rows", True) and any(f.table == "spectra" for f in entry.files)
        if meta.get("kind") == "extract" and holds:
            self.holders.setdefault(
                (entry.run_id, meta.get("revision"), meta.get("weights_sha256")), entry.task_id
            )

    def elsewhere(self, task: ExtractTask, weights_sha256: str) -> str | None:
        """The task of another probe that holds this checkpoint's weight rows, if one does."""
        holder = self.holders.get((task.ref.run_id, task.ref.revision, weights_sha256))
        return None if holder == task.task_id else holder


def without_weight_rows(tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
    """``tables`` without the rows of weight matrices (spectra and matrix_stats of tensor 'weight')."""
    import pyarrow.compute as pc

    return {
        name: table.filter(pc.not_equal(table["tensor"], "weight"))
        if name in ("spectra", "matrix_stats")
        else table
        for name, table in tables.items()
    }


def shape_mismatch(spec: ModelSpec, tables: dict[str, pa.Table]) -> str | None:
    """How the checkpoint's shape (its ``checkpoints`` row: layers, width, heads) differs from what the
    suite declares for its model, or None. Checkpoints of one model are compared with each other (CKA
    across steps, trajectories): one of another shape would be compared as if it were the same model."""
    checkpoint = tables.get("checkpoints")
    if checkpoint is None or checkpoint.num_rows != 1:
        return None
    found = checkpoint.to_pylist()[0]
    declared = {"n_layers": spec.n_layers, "d_model": spec.d_model, "n_heads": spec.n_heads}
    wrong = [f"{key} {found[key]}, not {value}" for key, value in declared.items() if found[key] != value]
    return "; ".join(wrong) or None


def record(
    warehouse: Warehouse,
    outcome: Outcome,
    report: ExtractReport,
    weights: WeightRows,
    specs: dict[str, ModelSpec] | None = None,
) -> None:
    task = outcome.task
    meta = task_meta(task)
    ref = task.ref
    spec = (specs or {}).get(ref.model)
    mismatch = shape_mismatch(spec, outcome.result.tables) if spec and outcome.result else None
    if mismatch:
        outcome = dataclasses.replace(
            outcome,
            result=None,
            error=f"the checkpoint is not of model {ref.model}'s shape ({mismatch}): its rows would be "
            f"compared with the model's other checkpoints as one model's; fix: point {ref.model}'s "
            f"checkpoints at its own weights, or correct suite.models[{ref.model}] (n_layers, d_model, n_heads)",
            detail=None,
        )
    if outcome.result is None:
        meta["traceback"] = outcome.detail
        warehouse.record_failure(
            task.task_id, ref.suite, ref.model, outcome.error or "", meta, run_id=ref.run_id
        )
        report.failed.append((task_label(task), outcome.error or "unknown error"))
        return
    result = outcome.result
    meta |= {
        "weights_sha256": result.weights_sha256,
        "weights_file": result.weights_file,
        "timings": result.timings,
        "placement": result.placement,
    }
    tables, holder = result.tables, weights.elsewhere(task, result.weights_sha256)
    if holder is not None:  # another probe's task of this checkpoint stores its weight rows
        tables, meta["weight_rows_in"] = without_weight_rows(tables), holder
    spectra = tables.get("spectra")
    meta["weight_rows"] = spectra is not None and "weight" in spectra.column("tensor").to_pylist()
    try:
        entry = warehouse.commit(task.task_id, ref.suite, ref.model, tables, meta, run_id=ref.run_id)
    except WarehouseError as error:  # rows the contract refuses: this checkpoint fails, the others go on
        warehouse.record_failure(task.task_id, ref.suite, ref.model, str(error), meta, run_id=ref.run_id)
        report.failed.append((task_label(task), str(error)))
        return
    weights.add(entry)
    report.committed.append(task_label(task))


def find_weight_duplicates(warehouse: Warehouse, plan: Plan) -> list[tuple[str, int, int]]:
    """``(model, step, first step)`` for each step of a planned model whose weights equal an earlier
    step's (mislabelled revisions), from the warehouse's ``duplicate_weights`` audit (its one home)."""
    from layerlake.warehouse import connect
    from layerlake.warehouse.audits import AUDITS, run_audit

    con = connect(warehouse.root)
    try:
        rows = run_audit(con, AUDITS.get("duplicate_weights")).to_pylist()
    finally:
        con.close()
    return [
        (row["model"], step, row["steps"][0])
        for row in rows
        if row["suite"] == plan.suite and row["model"] in plan.models
        for step in row["steps"][1:]
    ]


def files_unchanged(task: ExtractTask, recorded: dict) -> bool:
    """Whether a local checkpoint's files are those its committed rows were made from (``recorded``, the
    task's ``sources.checkpoint_fingerprint``: the weights, whole or sharded, and config.json), compared by
    ``checkpoint_files.unchanged``. A folder whose files cannot be listed now (its weights or a listed
    shard gone, a malformed index) keeps its committed rows: the task would only fail. An entry committed
    before config.json and shards were fingerprinted recorded the weights file alone, and is compared on
    it. Hub checkpoints are named by their revision, which the hub does not change."""
    if task.ref.source != SuiteSource.local or not recorded:
        return True
    try:
        paths = checkpoint_files(task.ref)
        if "files" not in recorded:  # {"size", "mtime_ns", "sha256"} of model.safetensors (or model.pt)
            weights = local_weights(task.ref)
            if weights.index is not None:
                return False  # sharded now, one file then
            return unchanged(weights.paths, {"files": {weights.main.name: recorded}})
        return unchanged(paths, recorded)
    except (CheckpointError, OSError):  # unreadable now (permissions, an I/O error): the task would only fail
        return True


def tasks_to_run(warehouse: Warehouse, plan: Plan, committed: dict) -> tuple[list[ExtractTask], int, int]:
    """Tasks not yet committed, committed with other extraction options or from checkpoint files that
    changed since (weights or config.json: their rows get replaced), or whose files no longer verify; how
    many of them are replacements, and how many of those are for changed checkpoint files."""
    todo, replaced, changed = [], 0, 0
    for task in plan.tasks:
        entry = committed.get(task.task_id)
        if entry is None or warehouse.problems(entry):
            todo.append(task)
        elif entry.meta.get("config_hash") != task.options.config_hash():
            todo.append(task)
            replaced += 1
        elif not files_unchanged(task, entry.meta.get("weights_file") or {}):
            todo.append(task)
            replaced += 1
            changed += 1
    return todo, replaced, changed


def announce_replacements(warehouse: Warehouse, todo: list[ExtractTask], committed: dict) -> int:
    """Say on stderr, before anything runs, how many stored rows the plan replaces (the committed rows
    of checkpoints extracted before with other extraction options or from files that changed), per table;
    returns that row count (0: nothing said)."""
    from rich.console import Console

    tables: Counter[str] = Counter()
    checkpoints = 0
    for task in todo:
        entry = committed.get(task.task_id)
        if entry is None or warehouse.problems(entry):  # new, or damaged: nothing readable is replaced
            continue
        checkpoints += 1
        for file in entry.files:
            tables[file.table] += file.rows
    if not checkpoints:
        return 0
    rows = sum(tables.values())
    detail = ", ".join(f"{table} {count:,}" for table, count in sorted(tables.items()))
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"{checkpoints} checkpoint(s) were extracted before with other extraction options or from checkpoint "
        f"files that changed since (weights or config.json): extracting them again replaces their {rows:,} "
        f"stored rows ({detail}) as each one commits"
    )
    return rows


def check_families(todo: list[ExtractTask]) -> None:
    """Each model's layout must fit it, checked on its first checkpoint to extract before any task runs or
    anything is written: a Hugging Face model's family by its config's ``model_type`` (an unknown one names
    the known families), or its given layout; a model built by a constructor is built on the meta device
    (names and shapes, no memory) and its layout fitted (a pattern that fits nothing is named)."""
    from layerlake.etl.layouts import fit, layout_for_type
    from layerlake.etl.sources import build_model, model_type_of

    first = {}
    for task in todo:
        first.setdefault(task.ref.model, task.ref)
    for model, ref in first.items():
        where = f"{model} ({ref.stored_location}): "
        if ref.constructor:
            try:
                built = build_model(ref, device="meta")
            except Exception as error:  # the constructor itself fails with these kwargs
                raise ExtractionError(
                    f"{where}its constructor failed: {type(error).__name__}: {error}",
                    fix=f"check suite.models[{model}].constructor (target and kwargs)",
                ) from error
            try:
                fit(built, ref.layout)
            except ExtractionError as error:
                raise ExtractionError(where + error.message, fix=error.fix) from None
            continue
        model_type = model_type_of(ref)
        if model_type is not None and not ref.layout:
            layout_for_type(model_type, where=where)


def activation_bytes(settings: Config, todo: list[ExtractTask], n: int) -> int:
    """What ``extract.store_activations`` adds to the warehouse for ``todo`` (before compression): per
    checkpoint, each layer's whole-layer sites, n probe rows x d_model features x 2 bytes (float16)."""
    specs = {m.name: m for m in settings.suite.models}
    sites = len(settings.extract.sites)
    return sum(specs[t.ref.model].n_layers * sites * n * specs[t.ref.model].d_model * 2 for t in todo)


def announce_activations(settings: Config, todo: list[ExtractTask], n: int) -> None:
    """Say, before anything runs, how much storing the probe activations costs."""
    from rich.console import Console

    size = activation_bytes(settings, todo, n)
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"extract.store_activations=true: the probe activations of {len(todo)} checkpoint(s) take about "
        f"{byte_size(size)} ({n} probe rows x d_model x 2 bytes, {len(settings.extract.sites)} sites "
        "per layer); set it to false to keep only the sketches"
    )


def byte_size(size: float) -> str:
    """``1536`` -> ``1.5 KiB``."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} bytes" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} TiB"


def run_extract(settings: Config) -> ExtractReport:
    plan = make_plan(settings)
    warehouse = Warehouse(settings.paths.warehouse)
    warehouse.check_version()
    run_ids = {t.ref.run_id for t in plan.tasks} | {extract_run_id(plan.suite, m) for m in plan.models}
    refuse_archived(warehouse, run_ids, "extract into it", "or leave its model out (models=[...])")
    report = ExtractReport(planned=len(plan.tasks))
    committed = warehouse.committed()  # the manifest, read once for the whole plan
    todo, report.replaced, report.changed = tasks_to_run(warehouse, plan, committed)
    report.skipped = report.planned - len(todo)
    check_families(todo)
    announce_replacements(warehouse, todo, committed)
    if settings.extract.store_activations and todo:
        announce_activations(settings, todo, plan.probe.n)
    executor = make_executor(settings.executor) if todo else None  # fails (e.g. no ray) before any write
    try:
        runs = start_runs(warehouse, plan, settings)
        not_run = None  # after Ctrl-C: per model, the checkpoints that did not run
        if executor is not None:
            per_model = Counter(t.ref.model for t in todo)
            downloads = HubDownloads(settings.suite, todo)
            costs = {spec.name: checkpoint_cost(spec) for spec in settings.suite.models}
            with ExtractProgress(per_model, enabled=settings.progress, priors=costs) as progress:
                weights = WeightRows(warehouse.committed())
                specs = {spec.name: spec for spec in settings.suite.models}
                try:
                    for outcome in executor.run(todo):
                        record(warehouse, outcome, report, weights, specs)
                        report.resubmitted += outcome.resubmitted > 0
                        downloads.recorded(outcome.task)  # once committed: a download not kept is deleted
                        progress.advance(outcome)
                except KeyboardInterrupt:  # what was committed stays; the report says what is left
                    report.interrupted = True
                except BaseException as error:  # the runs end failed, not left running, then it goes on up
                    end_runs_after(warehouse, runs, error)
                    raise
            done = set(report.committed)
            report.throughput = progress.throughput(
                Counter(t.ref.model for t in todo if task_label(t) not in done)
            )
            if report.interrupted:
                done |= {label for label, _ in report.failed}
                not_run = Counter(t.ref.model for t in todo if task_label(t) not in done)
        end_runs(warehouse, runs, report, not_run)
    finally:
        if executor is not None:
            executor.close()
    report.duplicates = find_weight_duplicates(warehouse, plan)
    return report
