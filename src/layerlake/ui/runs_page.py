"""The UI's runs pages: the runs table, a run's page (live while it runs), a sweep's view.

    /runs                               the runs table (search, filter, sort, columns, compare)
    /run?id=RUN                         one run: config, provenance, logged values, snapshots, CKA, ranks
    /sweep?dir=DIR                      the runs of one Hydra multirun: hyperparameters against an outcome
    /api/runs_table?search=&filter=&sort=&desc=1   the table's rows (``warehouse.run_table``)
    /api/run?id=RUN                     everything the run page shows
    /api/run_updates?id=RUN&after=STEP  what changed since: status, values logged after STEP, snapshots
    /api/run_figures?id=RUN             the run's CKA to its final snapshot and its rank trajectories
    /api/sweep?dir=DIR&outcome=O        the sweep's runs, swept keys, outcome and figure
    /api/version                        the warehouse's version (what a live page polls)

Read-only like every page. A run id or sweep folder a request names is looked up in the stored runs
(``ParameterError`` naming the closest one otherwise) and only ever bound as a SQL parameter; it never
becomes a path. Answers that read the warehouse are cached per warehouse version (``UiApp.cached``), so
a live page polling an unchanged warehouse reads nothing; when a run commits, the page asks only for
the values logged after the last step it has.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from layerlake.core.choices import did_you_mean
from layerlake.core.errors import LayerlakeError, ParameterError
from layerlake.core.render import json_rows
from layerlake.queries import figures, run_figures
from layerlake.ui import pages
from layerlake.ui.responses import Response, html_response, json_response
from layerlake.warehouse import run_table, schema

# Logged values one answer sends, over all the run's series: a series with more is thinned (``_logged``),
# never cut off. Each series gets an equal share, at least SERIES_POINTS_MIN (a run logging 500 names).
LOGGED_POINTS = 20_000
SERIES_POINTS_MIN = 200
# Tables whose rows a snapshot writes, with a step column: what the run page counts per snapshot.
SNAPSHOT_TABLES = tuple(
    name for name, t in schema.TABLES.items() if "step" in t.column_names and name not in ("scalars",)
)


def routes(app: Any) -> dict[str, Any]:
    pages_ = RunsPages(app)
    return {
        "/runs": lambda q: html_response(pages.runs_table()),
        "/run": pages_.run_page,
        "/sweep": lambda q: html_response(pages.sweep()),
        "/api/runs_table": pages_.runs_table,
        "/api/run": pages_.run,
        "/api/run_updates": pages_.run_updates,
        "/api/run_figures": pages_.run_figures,
        "/api/sweep": pages_.sweep,
        "/api/version": pages_.version,
    }


def version_text(stamp: Any) -> str:
    return hashlib.sha256(repr(stamp).encode()).hexdigest()[:16]


class RunsPages:
    def __init__(self, app: Any) -> None:
        self.app = app

    # -- the runs table ----------------------------------------------------------------------------

    def table(self) -> run_table.RunsTable:
        """The whole runs table, built once per warehouse version."""
        return self.app.cached("runs_table", self._build_table)

    def _build_table(self) -> run_table.RunsTable:
        con = self.app.warehouse.cursor()
        try:
            return run_table.build(con)
        finally:
            con.close()

    def runs_table(self, params: dict[str, str]) -> Any:
        _only(params, "search", "filter", "sort", "desc")
        table = self.table()
        rows = table.select(
            params.get("search", ""),
            params.get("filter", ""),
            params.get("sort", ""),
            params.get("desc") == "1",
        )
        return json_response({
            "columns": table.columns,
            "hidden": [c for c in table.columns if c in run_table.DEFAULT_HIDDEN],
            "rows": rows, "total": len(table.rows), "shared": table.shared,
            "version": version_text(self.app.warehouse.version()),
        })  # fmt: skip

    def version(self, params: dict[str, str]) -> Any:
        _only(params)
        return json_response({"version": version_text(self.app.warehouse.version())})

    # -- one run -------------------------------------------------------------------------------------

    def run_id(self, params: dict[str, str]) -> str:
        """The stored run the request names (``id=``)."""
        wanted = params.get("id", "")
        known = [r["run_id"] for r in self.table().rows]
        if wanted not in known:
            raise ParameterError(
                f"run {wanted!r} is not in the warehouse{did_you_mean(wanted, known)}",
                fix="open it from the runs table (/runs); an archived run is listed by `layerlake runs --archived`",
            )
        return wanted

    def run_page(self, params: dict[str, str]) -> Any:
        _only(params, "id")
        try:
            run_id = self.run_id(params)
        except LayerlakeError as error:
            return Response(404, "text/plain; charset=utf-8", f"{error.message}\nfix: {error.fix}".encode())
        return html_response(pages.run(run_id))

    def run(self, params: dict[str, str]) -> Any:
        _only(params, "id")
        run_id = self.run_id(params)
        return json_response(self.app.cached(("run", run_id), lambda: self._run(run_id)))

    def _run(self, run_id: str) -> dict[str, Any]:
        con = self.app.warehouse.cursor()
        try:
            row = con.sql("select * from runs where run_id = $r", params={"r": run_id}).to_arrow_table()
            run = json_rows(row)[0]
            tags = json_rows(con.sql(
                "select key, value, tagged_at from run_tags where run_id = $r order by key", params={"r": run_id}
            ).to_arrow_table())  # fmt: skip
            notes = json_rows(con.sql(
                "select note, noted_at from run_notes where run_id = $r order by noted_at", params={"r": run_id}
            ).to_arrow_table())  # fmt: skip
            logged, thinned = _logged(con, run_id, None)
            snapshots = _snapshots(con, run_id)
        finally:
            con.close()
        try:
            config = json.loads(run.pop("config_json") or "{}")
        except ValueError:
            config = {}
        return {
            "run": run, "config": run_table.flatten(config), "tags": tags, "notes": notes, "logged": logged,
            "thinned": thinned, "last_step": max((r["step"] for r in logged), default=None), "snapshots": snapshots,
            "logged_chart": run_figures.logged_figure(logged), "version": version_text(self.app.warehouse.version()),
        }  # fmt: skip

    def run_updates(self, params: dict[str, str]) -> Any:
        """What a live run page lacks: the run's status, the values logged after step ``after``, and
        its snapshots (a short list) when their number is not ``snapshots``."""
        _only(params, "id", "after", "snapshots")
        run_id = self.run_id(params)
        after = _integer(params.get("after", ""), "after")
        known = _integer(params.get("snapshots", ""), "snapshots")
        key = ("run_updates", run_id, after, known)
        return json_response(self.app.cached(key, lambda: self._updates(run_id, after, known)))

    def _updates(self, run_id: str, after: int | None, known: int | None) -> dict[str, Any]:
        con = self.app.warehouse.cursor()
        try:
            status = con.execute(
                "select status, ended_at, error from runs where run_id = ?", [run_id]
            ).fetchall()[0]
            logged, thinned = _logged(con, run_id, after)
            count = con.execute(
                "select count(distinct step) from checkpoints where run_id = ?", [run_id]
            ).fetchall()[0][0]
            snapshots = _snapshots(con, run_id) if count != known else None
        finally:
            con.close()
        return {
            "status": status[0], "ended_at": status[1], "error": status[2], "logged": logged,
            "thinned": thinned, "snapshots": snapshots, "version": version_text(self.app.warehouse.version()),
        }  # fmt: skip

    def run_figures(self, params: dict[str, str]) -> Any:
        _only(params, "id")
        run_id = self.run_id(params)
        return json_response(self.app.cached(("run_figures", run_id), lambda: self._figures(run_id)))

    def _figures(self, run_id: str) -> dict[str, Any]:
        """The run's layers' CKA to its final snapshot (recipe convergence) and its rank trajectories
        (recipe rank_trajectories), each recipe run over the run's model and kept to the run's rows."""
        import pyarrow.compute as pc

        from layerlake.core.duck import limited
        from layerlake.queries.loader import bind_params, load_recipe, run_recipe

        model = next(r["model"] for r in self.table().rows if r["run_id"] == run_id)
        out: dict[str, Any] = {}
        con = self.app.warehouse.cursor()
        try:
            with limited(con, self.app.limits):
                for key, name in (("cka", "convergence"), ("ranks", "rank_trajectories")):
                    recipe = load_recipe(name)
                    bound = bind_params(recipe, {"models": [model]})
                    table = run_recipe(con, name, bound)
                    table = table.filter(pc.equal(table.column("run_id"), run_id))
                    out[key] = figures.recipe_figure(recipe, bound, table) if table.num_rows else None
        finally:
            con.close()
        return out

    # -- a sweep -------------------------------------------------------------------------------------

    def sweep(self, params: dict[str, str]) -> Any:
        _only(params, "dir", "outcome")
        table = self.table()
        sweeps: dict[str, int] = {}
        for r in table.rows:
            if r["sweep_dir"]:
                sweeps[r["sweep_dir"]] = sweeps.get(r["sweep_dir"], 0) + 1
        listed = [{"sweep_dir": d, "runs": n} for d, n in sorted(sweeps.items())]
        wanted = params.get("dir", "") or (listed[-1]["sweep_dir"] if listed else "")
        if not wanted:
            return json_response(
                {"sweeps": [], "rows": [], "keys": [], "chart": None, "outcomes": run_figures.OUTCOMES}
            )
        if wanted not in sweeps:
            raise ParameterError(
                f"no run belongs to sweep {wanted!r}{did_you_mean(wanted, list(sweeps))}",
                fix="choose one of the sweeps listed (runs of a Hydra multirun record their sweep folder)",
            )
        outcome = params.get("outcome", "") or "final_loss"
        if outcome not in run_figures.OUTCOMES:
            raise ParameterError(
                f"unknown outcome {outcome!r}{did_you_mean(outcome, list(run_figures.OUTCOMES))}",
                fix=f"use one of: {', '.join(run_figures.OUTCOMES)}",
            )
        answer = self.app.cached(("sweep", wanted, outcome), lambda: self._sweep(wanted, outcome))
        return json_response(
            {"sweeps": listed, "sweep_dir": wanted, "outcomes": run_figures.OUTCOMES, **answer}
        )

    def _sweep(self, sweep_dir: str, outcome: str) -> dict[str, Any]:
        rows = [r for r in self.table().rows if r["sweep_dir"] == sweep_dir]
        configs = {r["run_id"]: r for r in rows}
        keys = _swept_keys(rows)
        values = self._outcome(outcome, sorted({r["model"] for r in rows}), set(configs))
        out = [
            {"run_id": r["run_id"], "job_num": r["job_num"], "status": r["status"],
             **{k: _key_value(r, k) for k in keys}, outcome: values.get(r["run_id"])}
            for r in sorted(rows, key=lambda r: (r["job_num"] is None, r["job_num"] or 0, r["run_id"]))
        ]  # fmt: skip
        return {
            "keys": keys,
            "outcome": outcome,
            "rows": out,
            "chart": run_figures.sweep_figure(out, keys, outcome),
        }

    def _outcome(self, outcome: str, models: list[str], runs: set[str]) -> dict[str, float]:
        """run_id -> the outcome, for the runs of a sweep."""
        if outcome == "final_loss":
            return {r["run_id"]: r.get("last.loss") for r in self.table().rows if r["run_id"] in runs}
        from layerlake.core.duck import limited
        from layerlake.queries.loader import bind_params, load_recipe, run_recipe

        name, column = {
            "stabilised_share": ("stabilised_share", "share_stabilised"),
            "median_stabilisation_step": ("stabilisation", "stabilisation_step"),
        }[outcome]
        recipe = load_recipe(name)
        con = self.app.warehouse.cursor()
        try:
            with limited(con, self.app.limits):
                table = run_recipe(con, name, bind_params(recipe, {"models": models}))
        finally:
            con.close()
        found: dict[str, list[float]] = {}
        for run_id, value in zip(
            table.column("run_id").to_pylist(), table.column(column).to_pylist(), strict=True
        ):
            if run_id in runs and value is not None:
                found.setdefault(run_id, []).append(float(value))
        if outcome == "stabilised_share":  # the mean over the run's sites
            return {r: sum(v) / len(v) for r, v in found.items()}
        return {r: sorted(v)[len(v) // 2] if len(v) % 2 else sum(sorted(v)[len(v) // 2 - 1 : len(v) // 2 + 1]) / 2
                for r, v in found.items()}  # fmt: skip


def _swept_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The config keys (and the seed) whose values differ between a sweep's runs."""
    keys = sorted({c for r in rows for c in r if c.startswith("config.")})
    differing = [k for k in keys if len({json.dumps(r.get(k), default=str) for r in rows}) > 1]
    keys = [k.removeprefix("config.") for k in differing]
    if (
        len({r["seed"] for r in rows}) > 1 and "seed" not in keys
    ):  # a seed given to track(), not in the config
        keys.append("seed")
    return keys


def _key_value(row: dict[str, Any], key: str) -> Any:
    return row.get("seed") if key == "seed" else row.get(f"config.{key}")


def _logged(con: Any, run_id: str, after: int | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The run's logged values (the run's own: rank NULL), after step ``after`` when given, and which
    series were thinned (name, stored, shown). Every series is sent: one holding more than its share of
    ``LOGGED_POINTS`` is thinned to about that share, evenly spaced by step, keeping its first and last
    values and its lowest and highest."""
    where = {"r": run_id, "after": after}
    counts = dict(con.execute(LOGGED_COUNTS_SQL, where).fetchall())
    if not counts:
        return [], []
    share = max(SERIES_POINTS_MIN, LOGGED_POINTS // len(counts))
    rows = json_rows(con.sql(THINNED_SQL, params={**where, "k": share}).to_arrow_table())
    shown: dict[str, int] = {}
    for r in rows:
        shown[r["name"]] = shown.get(r["name"], 0) + 1
    thinned = [
        {"name": name, "stored": n, "shown": shown.get(name, 0)}
        for name, n in sorted(counts.items())
        if shown.get(name, 0) < n
    ]
    return rows, thinned


LOGGED_COUNTS_SQL = (
    "select name, count(*) from scalars where run_id = $r and rank is null "
    "and ($after is null or step > $after) group by name"
)
# each series' values by step (i: 0, 1 ... n - 1): the first of each of k equal runs of them, the last, the
# lowest and the highest (finite) value; a series of at most k values whole
THINNED_SQL = """
with logged as (
    select name, step, value,
        row_number() over (partition by name order by step) - 1 as i,
        count(*) over (partition by name) as n,
        row_number() over (partition by name order by if(isfinite(value), value, null) asc nulls last) as low,
        row_number() over (partition by name order by if(isfinite(value), value, null) desc nulls last) as high
    from scalars where run_id = $r and rank is null and ($after is null or step > $after)
)
select name, step, value from logged
where n <= $k or i = 0 or (i * $k) // n > ((i - 1) * $k) // n or i = n - 1 or low = 1 or high = 1
order by name, step
"""


def _snapshots(con: Any, run_id: str) -> list[dict[str, Any]]:
    """One row per snapshot step of the run: its rows in each table a snapshot writes."""
    union = " union all ".join(
        f"select step, '{name}' as tbl, count(*) as n from {name} where run_id = $r group by step"
        for name in SNAPSHOT_TABLES  # names from the schema, never from a request
    )
    counts: dict[int, dict[str, Any]] = {}
    for step, table, n in con.execute(f"select * from ({union}) order by step", {"r": run_id}).fetchall():
        counts.setdefault(step, {"step": step})[table] = n
    return list(counts.values())


def _integer(text: str, name: str) -> int | None:
    if text == "":
        return None
    if not (text.isascii() and text.lstrip("-").isdigit()) or len(text) > 12:
        raise ParameterError(
            f"{name}={text!r} is not a whole number", fix=f"send {name} as digits, or leave it out"
        )
    return int(text)


def _only(params: dict[str, str], *names: str) -> None:
    unknown = [k for k in params if k not in names]
    if unknown:
        raise ParameterError(
            f"unknown field {unknown[0]!r}", fix=f"this endpoint takes: {', '.join(names) or 'nothing'}"
        )
