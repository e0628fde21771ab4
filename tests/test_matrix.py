"""Every command on every warehouse state.

States: a fresh extraction (two probes on the same checkpoints), tracked runs compacted (what ``make
demo`` leaves) with imported metrics, that warehouse migrated from the previous schema (3), filled by
``share import``, a warehouse opened with a shared folder attached, and after a SIGKILL of ``compact`` and
of ``migrate`` (from schema 2).
Commands: ``check``, ``sql``, every recipe through ``query``, every UI page's data, ``share export``,
``share import`` of that export into an empty warehouse and into the same one, ``share attach``,
``compact``, ``migrate``, ``runs``. Each cell runs on its own copy of the state, in process (the CLI's
``main``), and must exit 0 or with a clear error naming the fix, never a traceback; afterwards every
table holds the rows it held, and ``check`` passes.

States are built once per module, each when a test first needs it, from tiny real models: the tiny
suite's checkpoints extracted (``tests/conftest.py``), and a tiny GPT-NeoX trained a few steps through
``layerlake.track``. ``make test`` runs one cell per command covering every state (``DEFAULT_CELLS``);
``make test-slow`` runs all of them.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from test_gram_storage import as_schema_2
from test_import_metrics import write_csv
from test_interrupted import killed
from test_scalars_rank import as_schema_3
from test_trust_identity import under

import layerlake
from layerlake import warehouse
from layerlake.cli.main import main
from layerlake.conf.compose import compose
from layerlake.core.errors import LayerlakeError
from layerlake.etl.driver import run_extract
from layerlake.queries.command import run_configured
from layerlake.queries.loader import recipe_names
from layerlake.ui import pages
from layerlake.ui.app import UiApp
from layerlake.warehouse import schema
from layerlake.warehouse.journal import journal_path
from layerlake.warehouse.writer import Warehouse

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models  # noqa: E402

PROBE = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 18], [19, 20, 21, 22, 23, 24]]
SUITE = "embedded"


@dataclass(frozen=True)
class State:
    """A warehouse in one state, and the rows per table it must hold (before and after any command)."""

    root: Path
    counts: dict[str, int]  # rows per table of the root
    model: str  # a model with sketches, for the recipes that need one
    attach: Path | None = None  # a shared folder served beside the root (share attach)
    seen: dict[str, int] | None = None  # rows per table of the root and the attached folder together
    outdated: bool = False  # a killed migrate was rolled back: schema 2 until `layerlake migrate` runs
    hydra: bool = False  # run the recipes through the real `layerlake query` command line


def counts(root: Path, attach: tuple[Path, ...] = ()) -> dict[str, int]:
    con = warehouse.connect(root, attach=attach)
    try:
        return {t: con.sql(f"select count(*) from {t}").fetchall()[0][0] for t in schema.TABLES}
    finally:
        con.close()


def listed_counts(root: Path) -> dict[str, int]:
    """Rows per table as the manifest lists them (no DuckDB: cheap enough for every cell), after checking
    that every listed file holds exactly the rows its listings give it (a merged file: the sum of its
    tasks' slices), so a reader that reads whole files sees each listed row once."""
    import pyarrow.parquet as pq

    found = dict.fromkeys(schema.TABLES, 0)
    per_file: dict[str, int] = {}
    for entry in Warehouse(root).committed().values():
        for f in entry.files:
            found[f.table] += f.rows
            per_file[f.path] = per_file.get(f.path, 0) + f.rows
    for path, rows in per_file.items():
        assert pq.ParquetFile(root / path).metadata.num_rows == rows, path
    return found


def track_run(root: Path, seed: int, compact: bool) -> None:
    """A tiny GPT-NeoX trained 4 steps through the tracker: scalars, 3 snapshots, a run row."""
    model = tiny_models.neox(seed=seed).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    batches = torch.Generator().manual_seed(seed)
    with layerlake.track(
        model, suite=SUITE, model_name="neox-t", run_id=f"{SUITE}.neox-t.seed{seed}", probe=PROBE, seed=seed,
        warehouse=root, cadence=[0, 2, 3], compact=compact,
    ) as run:  # fmt: skip
        for step in range(4):
            batch = torch.randint(0, 40, (4, 8), generator=batches)
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            run.log(step, loss=loss.item(), lr=0.05)
            run.snapshot(step, model)
    assert not run.failures, run.failures


class States:
    """The warehouse states, each built the first time a test asks for it (a test of one state builds only
    what that state needs) and then shared, read-only, by every cell: a cell works on its own copy."""

    def __init__(self, tiny_suite, base: Path) -> None:
        self.tiny_suite, self.base = tiny_suite, base
        self.built: dict[str, State] = {}
        self.exported: Path | None = None

    def __getitem__(self, name: str) -> State:
        if name not in self.built:
            self.built[name] = BUILDERS[name](self)
        return self.built[name]

    def fresh(self) -> State:
        """tiny-a's checkpoints extracted through two probes (a second probe adds rows beside the first)."""
        settings, suites = self.tiny_suite
        fresh = dataclasses.replace(under(settings, self.base / "fresh", suites), models=["tiny-a"])
        assert run_extract(fresh).ok
        first = counts(Path(fresh.paths.warehouse))
        assert run_extract(
            dataclasses.replace(fresh, probe=dataclasses.replace(fresh.probe, n_sequences=6))
        ).ok
        root = Path(fresh.paths.warehouse)
        fresh_counts = counts(root)
        con = warehouse.connect(root)
        assert con.sql("select count(distinct probe_id) from sketches").fetchall() == [(2,)]
        con.close()
        assert fresh_counts["sketches"] == 2 * first["sketches"]  # the second probe replaced nothing
        return State(root, fresh_counts, "tiny-a")

    def tracked(self) -> State:
        """Tracked runs, compacted as each finishes, and metrics imported from elsewhere (``make demo``)."""
        tracked = self.base / "tracked"
        for seed in (0, 1):
            track_run(tracked, seed, compact=True)
        assert main(["import-metrics", str(write_csv(self.base / "m.csv")), "--source", "paper", "--suite",
                     "pythia", "--root", str(tracked)]) == 0  # fmt: skip
        assert any(f.shared for e in Warehouse(tracked).committed().values() for f in e.files)
        return State(tracked, counts(tracked), "neox-t", hydra=True)

    def export(self) -> Path:
        """The tracked warehouse's export."""
        if self.exported is None:
            self.exported = self.base / "tracked-export"
            assert (
                main(
                    [
                        "share",
                        "export",
                        str(self.exported),
                        "--root",
                        str(self["tracked runs compacted"].root),
                    ]
                )
                == 0
            )
        return self.exported

    def copy(self, name: str, to: str) -> tuple[Path, State]:
        source = self[name]
        shutil.copytree(source.root, self.base / to)
        return self.base / to, source

    def migrated(self) -> State:
        """The tracked warehouse as the previous schema (3) wrote it, then migrated."""
        root, tracked = self.copy("tracked runs compacted", "migrated")
        as_schema_3(root)
        assert main(["migrate", "--root", str(root)]) == 0
        return State(root, tracked.counts, "neox-t")

    def imported(self) -> State:
        """The tracked warehouse's export imported into an empty warehouse."""
        root = self.base / "imported"
        assert main(["share", "import", str(self.export()), "--root", str(root)]) == 0
        return State(root, self["tracked runs compacted"].counts, "neox-t")

    def attached(self) -> State:
        """The fresh extraction, with the tracked warehouse's export attached."""
        root, fresh = self.copy("fresh extraction", "attached")
        tracked = self["tracked runs compacted"]
        seen = {t: fresh.counts[t] + tracked.counts[t] for t in schema.TABLES}
        assert counts(root, (self.export(),)) == seen
        return State(root, fresh.counts, "tiny-a", self.export(), seen)

    def killed_compact(self) -> State:
        """The fresh extraction after a ``compact`` SIGKILLed once its files were in place."""
        root, fresh = self.copy("fresh extraction", "killed-compact")
        killed(root, "compact", "placed")
        return State(root, fresh.counts, "tiny-a")

    def killed_migrate(self) -> State:
        """The tracked warehouse as schema 2 wrote it (Grams as lists, scalars without rank), after a
        ``migrate`` SIGKILLed once its files were in place: rolled back by the next command."""
        root, tracked = self.copy("tracked runs compacted", "killed-migrate")
        as_schema_3(root)
        as_schema_2(root)
        named_by_content(root)
        killed(root, "migrate", "placed")
        return State(root, tracked.counts, "neox-t", outdated=True)


def named_by_content(root: Path) -> None:
    """Give every listed file the name a writer gives its bytes (``<task>-<sha256[:16]>.parquet``). The
    schema rewriters change files in place under their old names; a migration that writes the original
    bytes back would then name its file as the rewritten one and place it over a listed file, a
    collision no warehouse written by an older layerlake has."""
    manifest = root / "_manifest" / "commits.jsonl"
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    renamed: dict[str, str] = {}
    for line in lines:
        for entry in line.get("entries", [line]):
            for f in entry.get("files", []):
                old = f["path"]
                if old not in renamed:
                    renamed[old] = re.sub(r"-[0-9a-f]{16}\.parquet$", f"-{f['sha256'][:16]}.parquet", old)
                    if renamed[old] != old:
                        (root / old).rename(root / renamed[old])
                f["path"] = renamed[old]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))


BUILDERS = {
    "fresh extraction": States.fresh,
    "tracked runs compacted": States.tracked,
    "migrated from schema 3": States.migrated,
    "filled by share import": States.imported,
    "opened by share attach": States.attached,
    "after a killed compact": States.killed_compact,
    "after a killed migrate": States.killed_migrate,
}
STATES = tuple(BUILDERS)


@pytest.fixture(scope="module")
def states(tiny_suite, tmp_path_factory) -> States:
    return States(tiny_suite, tmp_path_factory.mktemp("states"))


def test_a_second_probe_on_the_same_checkpoints_adds_its_rows_beside_the_first(states):
    """Two probes on one checkpoint are two tasks: each keeps its activations, sketches and gradients
    (a gradient is taken on a probe batch); the checkpoint's weight rows are stored once."""
    con = warehouse.connect(states["fresh extraction"].root)
    try:

        def per_probe(sql: str) -> list[tuple]:
            return con.sql(sql).fetchall()

        checkpoints = per_probe("select probe_id, count(*) from checkpoints group by all order by all")
        assert len(checkpoints) == 2 and checkpoints[0][1] == checkpoints[1][1] == 3
        for table in ("activation_stats", "sketches"):
            counts_by_probe = per_probe(f"select probe_id, count(*) from {table} group by all")
            assert len(counts_by_probe) == 2 and counts_by_probe[0][1] == counts_by_probe[1][1] > 0, table
        for table in ("spectra", "matrix_stats"):
            grads = per_probe(f"select probe_id, count(*) from {table} where tensor = 'grad' group by all")
            assert len(grads) == 2 and grads[0][1] == grads[1][1] > 0, table
            weights = per_probe(
                f"select count(*), count(distinct (step, layer, matrix, head)), count(probe_id) from {table} "
                "where tensor = 'weight'"
            )
            assert weights[0][0] == weights[0][1] > 0 and weights[0][2] == 0, table  # once per checkpoint
    finally:
        con.close()


# --- the commands --------------------------------------------------------------------------------------


def fixed(state: State, err: str, code: int) -> bool:
    """Whether a command failed as it should on a rolled-back migration: exit 2 naming `layerlake migrate`."""
    return state.outdated and code == 2 and "layerlake migrate" in err


def run(state: State, capsys, argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out, err
    assert code == 0 or fixed(state, err, code), f"{argv}: exit {code}\n{out}\n{err}"
    return code, out, err


def cmd_check(state, root, tmp_path, capsys):
    code = main(["check", "--root", str(root)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if state.outdated:
        assert code == 1 and "FAIL schema_version" in out and "layerlake migrate" in " ".join(out.split())
    else:
        assert code == 0, out


def cmd_sql(state, root, tmp_path, capsys):
    attach = ["--attach", str(state.attach)] if state.attach else []
    union = " union all ".join(f"select '{t}' as t, count(*) as n from {t}" for t in schema.TABLES)
    code, out, _ = run(state, capsys, ["sql", "--root", str(root), *attach, "--format", "json", union])
    if code == 0:
        rows = (
            json.loads(out)
            if out.lstrip().startswith("[")
            else [json.loads(line) for line in out.splitlines()]
        )
        assert {r["t"]: r["n"] for r in rows} == (state.seen or state.counts)


def cmd_query(state, root, tmp_path, capsys):
    """Every recipe as ``layerlake query`` runs it. Hydra's composition costs about a second of CPU per
    recipe, so the demo's state runs a sweep and a single recipe through the real command line, and
    every other recipe (and state) goes through the function the command runs after its composition
    (``queries.command.run_configured``)."""
    common = [f"paths.data={tmp_path / 'data'}", f"paths.warehouse={root}", "plot.format=none"]
    names = recipe_names()
    if state.hydra:  # a sweep over recipes and a single run, as a user types them
        swept = ["layer_percentiles", "rank_and_convergence", "loss_and_convergence"]
        run(state, capsys, ["query", "-m", "recipe=" + ",".join(swept), *common])
        run(state, capsys, ["query", "step_similarity", f"model={state.model}", *common])
        names = [n for n in names if n not in (*swept, "step_similarity")]
    settings = compose(common)
    for name in names:
        given = {"model": state.model} if name == "step_similarity" else {}
        try:
            run_configured(settings, name, given, tmp_path / "runs" / name)
        except LayerlakeError as error:
            assert state.outdated and "layerlake migrate" in error.fix, error
        assert "Traceback" not in capsys.readouterr().err


def cmd_ui(state, root, tmp_path, capsys):
    """Every page (HTML shells, each recipe's form with its stored-value selects) and the data each
    figure page, the overview, compare runs and the SQL console fetch."""
    app = UiApp(root, attach=(state.attach,) if state.attach else ())
    html = ["/", "/sql", "/recipes", "/runs", *pages.FIGURE_PAGES]
    html += [f"/recipe?name={name}" for name in recipe_names()]
    for path in html:
        page, _, query = path.partition("?")
        answer = app.respond("GET", page, query)
        assert answer.status == 200 or (state.outdated and answer.status == 400), (path, answer.body[:300])
    data = ["/api/overview", "/api/runs", "/api/sql?q=select+count(*)+as+n+from+sketches"]
    figures = [recipe for recipe, _ in pages.FIGURE_PAGES.values()]  # the query cell runs every recipe
    data += [
        f"/api/recipe?name={n}" + (f"&model={state.model}" if n == "step_similarity" else "") for n in figures
    ]
    for path in data:
        page, _, query = path.partition("?")
        answer = app.respond("GET", page, query)
        body = json.loads(answer.body)
        if state.outdated:
            assert answer.status == 400 and "layerlake migrate" in body["fix"], body
            continue
        assert answer.status == 200 or ("fix" in body and body["fix"]), (path, body)
        if page == "/api/sql":
            assert body["rows"][0]["n"] == (state.seen or state.counts)["sketches"]
    runs = json.loads(app.respond("GET", "/api/runs").body).get("runs", [])
    if runs:
        chosen = ",".join(r["run_id"] for r in runs)
        answer = app.respond("GET", "/api/scalars", f"runs={chosen}&name=loss")
        assert answer.status == 200, answer.body[:300]


def cmd_export(state, root, tmp_path, capsys):
    folder = tmp_path / "export"
    code, _, _ = run(state, capsys, ["share", "export", str(folder), "--root", str(root)])
    if code == 0:
        tables = json.loads((folder / "manifest.json").read_text())["tables"]
        assert {t: v["rows"] for t, v in tables.items()} == {t: n for t, n in state.counts.items() if n}
        paths = [f["path"] for f in json.loads((folder / "manifest.json").read_text())["files"]]
        on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*.parquet")}
        assert on_disk == set(paths)  # each file once: a merged file is not written per task


def cmd_import_empty(state, root, tmp_path, capsys):
    folder, empty = tmp_path / "export", tmp_path / "empty"
    code, _, _ = run(state, capsys, ["share", "export", str(folder), "--root", str(root)])
    if code == 0:
        run(state, capsys, ["share", "import", str(folder), "--root", str(empty)])
        assert counts(empty) == state.counts
        assert main(["check", "--root", str(empty)]) == 0, capsys.readouterr().out
        assert rows_of(empty) == rows_of(root)


def cmd_import_same(state, root, tmp_path, capsys):
    folder = tmp_path / "export"
    code, _, _ = run(state, capsys, ["share", "export", str(folder), "--root", str(root)])
    if code == 0:
        before = (root / "_manifest" / "commits.jsonl").read_bytes()
        _, out, _ = run(state, capsys, ["share", "import", str(folder), "--root", str(root)])
        assert "imported 0 tasks" in out
        assert (root / "_manifest" / "commits.jsonl").read_bytes() == before  # unchanged


def cmd_attach(state, root, tmp_path, capsys):
    folder = state.attach or tmp_path / "export"
    if state.attach is None and not state.outdated:  # its own export: each task is shown once
        assert main(["share", "export", str(folder), "--root", str(root)]) == 0
    elif state.attach is None:
        folder = root  # nothing exports from a warehouse that must migrate first; attach it to itself
    union = " union all ".join(f"select '{t}' as t, count(*) as n from {t}" for t in schema.TABLES)
    code, out, _ = run(state, capsys, ["share", "attach", str(folder), "--root", str(root), "--sql", union])
    if code == 0:
        found = dict(re.findall(r"│ (\w+) +│ +(\d+) │", out))
        assert {t: int(n) for t, n in found.items()} == (state.seen or state.counts), out


def cmd_compact(state, root, tmp_path, capsys):
    run(state, capsys, ["compact", "--root", str(root)])


def cmd_migrate(state, root, tmp_path, capsys):
    code, out, _ = run(state, capsys, ["migrate", "--root", str(root)])
    assert ("nothing to migrate" in out) == (not state.outdated)


def cmd_runs(state, root, tmp_path, capsys):
    run(state, capsys, ["runs", "--root", str(root)])


def rows_of(root: Path) -> dict[str, list]:
    """Every table's rows (Grams as their bytes), sorted: what two warehouses must hold alike."""
    con = warehouse.connect(root)
    try:
        return {
            t: sorted(
                map(
                    repr,
                    con.sql(
                        f"select * exclude (gram) from {t}" if t == "sketches" else f"select * from {t}"
                    ).fetchall(),
                )
            )
            for t in schema.TABLES
        }
    finally:
        con.close()


COMMANDS = {
    "check": cmd_check, "sql": cmd_sql, "query": cmd_query, "ui": cmd_ui, "share export": cmd_export,
    "share import into an empty warehouse": cmd_import_empty, "share import into the same": cmd_import_same,
    "share attach": cmd_attach, "compact": cmd_compact, "migrate": cmd_migrate, "runs": cmd_runs,
}  # fmt: skip


# The cells of the default run (`make test`): every command once and every state at least once, the
# costly commands (query: every recipe; ui: every page) where they matter most. The other cells run with
# `make test-slow`.
DEFAULT_CELLS = {
    ("after a killed migrate", "check"), ("opened by share attach", "sql"), ("tracked runs compacted", "query"),
    ("fresh extraction", "ui"), ("migrated from schema 3", "share export"),
    ("filled by share import", "share import into an empty warehouse"),
    ("tracked runs compacted", "share import into the same"), ("after a killed compact", "share attach"),
    ("fresh extraction", "compact"), ("after a killed migrate", "migrate"), ("filled by share import", "runs"),
}  # fmt: skip
CELLS = [
    pytest.param(state, command, marks=() if (state, command) in DEFAULT_CELLS else pytest.mark.slow)
    for state in STATES
    for command in COMMANDS
]


def test_the_default_cells_cover_every_state_and_every_command():
    assert {s for s, _ in DEFAULT_CELLS} == set(STATES) and {c for _, c in DEFAULT_CELLS} == set(COMMANDS)


@pytest.mark.parametrize(("state_name", "command"), CELLS)
def test_every_command_on_every_state(state_name, command, states, tmp_path, capsys):
    state = states[state_name]
    root = tmp_path / "wh"
    shutil.copytree(state.root, root)
    COMMANDS[command](state, root, tmp_path, capsys)
    if state.outdated:  # the command said to migrate: once migrated, everything is there
        assert main(["migrate", "--root", str(root)]) == 0
    assert listed_counts(root) == state.counts
    assert main(["check", "--root", str(root)]) == 0, capsys.readouterr().out
    assert not journal_path(root).exists()
