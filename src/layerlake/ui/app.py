"""The web UI's requests and answers, without sockets: ``UiApp.respond(method, path, query)``.

Read-only by construction: only GET and HEAD are answered (anything else is 405), and a POST of a form
to the endpoints that only read (``POST_PATHS``: a SQL statement or a list of runs too long for an
address), checked as a GET is; no request value
becomes a file path (static files and recipes are looked up in fixed tables by name); SQL typed in the
console passes the same read-only check and runs under the same time and memory limits as ``layerlake
sql``; recipe parameters are validated against their declared types and bound, never formatted into SQL.

Pages are small HTML shells (``pages``) whose script fetches the JSON endpoints:

    /api/overview                      counts of what is stored, the runs, loss curves
    /runs, /run, /sweep and theirs      the runs pages (``runs_page``)
    /api/sql?q=...&page=N              one page of a read-only query's result
    /api/recipe?name=R&<param>=...     a recipe's result (rows, columns, a Vega-Lite chart)
    /api/recipe?name=R&...&format=csv  the same as a download (csv or parquet)
"""

from __future__ import annotations

import io
import json
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import pyarrow as pa

from layerlake.core.duck import QueryLimits, limited
from layerlake.core.errors import LayerlakeError, ParameterError
from layerlake.core.render import json_rows, write_stream
from layerlake.queries import figures
from layerlake.ui import pages, runs_page
from layerlake.ui.guard import Served
from layerlake.ui.responses import Response, console_rows, error_response, json_response
from layerlake.warehouse.clip import Clip
from layerlake.warehouse.sandbox import Sandbox, manifest_stamp

POST_PATHS = ("/api/sql", "/api/scalars")  # reading endpoints that also take their fields as a POSTed form
PAGE_ROWS = 100  # rows per page of a table
SQL_PAGE_BYTES = 1 << 20  # the most a console page holds (Arrow's bytes; its JSON is about as large)
STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
STATIC_DIR = Path(__file__).resolve().parent / "static"


class AnswerCache:
    """Answers computed once per warehouse version (the key holds the manifest's stamp), least recently
    used first out; a request for an answer that is being computed waits for it instead of computing
    it again. Errors are not kept."""

    def __init__(self, size: int = 48) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._done: OrderedDict[Any, Any] = OrderedDict()
        self._pending: dict[Any, Future] = {}

    def get(self, key: Any, compute: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._done:
                self._done.move_to_end(key)
                return self._done[key]
            future = self._pending.get(key)
            owner = future is None
            if owner:
                future = self._pending[key] = Future()
        if not owner:
            return future.result()
        try:
            value = compute()
        except BaseException as error:
            with self._lock:
                self._pending.pop(key, None)
            future.set_exception(error)
            raise
        with self._lock:
            self._pending.pop(key, None)
            self._done[key] = value
            while len(self._done) > self.size:
                self._done.popitem(last=False)
        future.set_result(value)
        return value


class ServedWarehouse:
    """The served warehouse: one read-only connection, opened again when the manifest changed (a run
    that is still tracking shows its new snapshots on the next request); a cursor per request."""

    def __init__(self, root: Path | None, attach: tuple[Path, ...] = ()) -> None:
        self.root, self.attach = root, attach  # root None: the attached folders alone (no local warehouse)
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._con: Any = None
        self._variables: list[tuple[str, Any]] = []
        self._running: list[tuple[str, int | None]] = []  # (host, pid) of the runs served as running

    def version(self) -> tuple:
        """What changes whenever the served rows may have changed: the manifests' sizes and times, and
        whether the processes of the runs shown as running are still alive (one that died shows as
        killed from the next request on)."""
        return self._manifest_stamp(), self._alive()

    def _alive(self) -> tuple:
        from layerlake.core.provenance import process_alive

        return tuple(process_alive(host, pid) is not False for host, pid in self._running)

    def _manifest_stamp(self) -> tuple:
        return manifest_stamp([f for f in (self.root, *self.attach) if f is not None])

    def _open(self) -> Any:
        from layerlake.warehouse.views import connect, gather, open_views

        if self.root is None:  # as `layerlake sql --attach` serves folders alone (``warehouse.sandbox``)
            return open_views(*gather(None, self.attach), read_only=True)
        return connect(self.root, read_only=True, attach=self.attach)

    def cursor(self) -> Any:
        with self._lock:
            stamp = self.version()
            if self._con is None or stamp != self._stamp:
                if self._con is not None:
                    self._con.close()
                self._con = self._open()
                self._running = self._con.execute(
                    "select host, pid from runs where status = 'running'"
                ).fetchall()
                self._stamp = self.version()
                names = [n for (n,) in self._con.execute("select name from duckdb_variables()").fetchall()]
                self._variables = [
                    (n, self._con.execute("select getvariable(?)", [n]).fetchall()[0][0]) for n in names
                ]  # typed values (the table holds them as text)
            cursor = self._con.cursor()
        for name, value in self._variables:  # the views read session variables: each cursor gets them
            cursor.execute(f"SET VARIABLE {name} = ?", [value])
        return cursor


class UiApp:
    def __init__(
        self, root: Path | None, attach: tuple[Path, ...] = (), limits: QueryLimits | None = None
    ) -> None:
        self.warehouse = ServedWarehouse(root, attach)
        self.limits = limits or QueryLimits()
        self.routes = {
            "/": lambda q: self._page(pages.overview()),
            "/sql": lambda q: self._page(pages.sql_console()),
            "/recipes": lambda q: self._page(pages.recipes()),
            "/recipe": self._recipe_page,
            **{path: self._named_page(recipe, title) for path, (recipe, title) in pages.FIGURE_PAGES.items()},
            "/compare": lambda q: self._page(pages.compare()),
            **runs_page.routes(self),
            "/api/runs": self._runs,
            "/api/scalars": self._scalars,
            "/api/overview": self._overview,
            "/api/sql": self._sql,
            "/api/recipe": self._recipe,
        }
        self._vega: bytes | None = None
        self._vega_lock = threading.Lock()
        self.answers = AnswerCache()
        self.served: Served | None = None  # set by serve_at: then only requests addressed to it
        self._sandbox: Sandbox | None = None
        self._sandbox_lock = threading.Lock()

    def cached(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()``'s answer for ``key`` on this version of the warehouse; errors are raised, not kept."""
        return self.answers.get((key, self.warehouse.version()), compute)

    def warm(self) -> None:
        """Compute what the pages show first (the overview; each figure page's form and its default
        result) in the background, so that opening a page finds its data ready. Runs once, at start."""
        from layerlake.queries.loader import load_recipe

        try:
            self._overview({})
            runs_page.RunsPages(self).table()  # the runs table, built once per warehouse version
        except LayerlakeError:
            pass  # the page will say what is wrong when it is opened
        for recipe_name, title in pages.FIGURE_PAGES.values():
            recipe = load_recipe(recipe_name)
            try:
                self._form_page(recipe_name, title)
                if _nothing_stored(recipe, self._stored(recipe)):
                    continue  # the page asks for nothing
                first = {
                    p.name: pages.preselected(p, self._stored(recipe).get(p.name)) for p in recipe.params
                }
                self._recipe({"name": recipe_name, **{k: v for k, v in first.items() if v}})
            except LayerlakeError:
                continue  # that page will say what is wrong when it is opened; the next is still warmed

    # -- dispatch ------------------------------------------------------------------------------------

    def serve_at(self, host: str, port: int) -> None:
        """Answer only requests addressed to ``host:port`` from this server's own pages (``ui.guard``)."""
        self.served = Served.at(host, port)

    def respond(
        self, method: str, path: str, query: str = "", headers: Iterable[tuple[str, str]] | None = None
    ) -> Response:
        """The answer to one request. ``headers`` (name, value pairs, as the server received them) are
        checked against the served address when the app serves one (``serve_at``); a caller in this
        process (a test, the warm-up) may leave them out. Never raises: an unexpected failure is a 500
        with one line on stderr, never a traceback or an empty reply."""
        try:
            return self._respond(method, path, query, headers)
        except Exception as error:  # noqa: BLE001 (a bug must not kill the reply; the line names it)
            print(f"layerlake ui: {method} {path} failed: {type(error).__name__}: {error}", file=sys.stderr)
            return json_response(
                {"error": f"the server failed: {type(error).__name__}: {error}", "fix": "report this"}, 500
            )

    def _respond(
        self, method: str, path: str, query: str, headers: Iterable[tuple[str, str]] | None
    ) -> Response:
        if self.served is not None and headers is not None:
            refused = self.served.refusal(headers)
            if refused is not None:
                return json_response({"error": refused, "fix": f"open {self.served.url} in the browser"}, 403)
        if method not in ("GET", "HEAD") and not (method == "POST" and path in POST_PATHS):
            return json_response(
                {"error": f"{method} {path} is refused: the UI is read-only",
                 "fix": f"use GET (POST only a form to {' or '.join(POST_PATHS)}, which read)"}, 405,
            ).with_headers({"Allow": "GET, HEAD"})  # fmt: skip
        if path == "/favicon.ico":
            return Response(204, "image/x-icon", b"")
        if path.startswith("/static/"):
            return self._static(path.removeprefix("/static/"))
        handler = self.routes.get(path)
        if handler is None:
            return json_response({"error": f"no page {path!r}", "fix": "start from the overview, /"}, 404)
        try:
            return handler(query_params(query))
        except LayerlakeError as error:
            return error_response(error)

    def close(self) -> None:
        """Stop the SQL console's worker processes."""
        with self._sandbox_lock:
            sandbox, self._sandbox = self._sandbox, None
        if sandbox is not None:
            sandbox.close()

    def sandbox(self) -> Sandbox:
        """The SQL console's worker processes (``warehouse.sandbox``), started on first use."""
        with self._sandbox_lock:
            if self._sandbox is None:
                warehouse = self.warehouse
                self._sandbox = Sandbox(warehouse.root, warehouse.attach, self.limits)
            return self._sandbox

    def _page(self, html: str) -> Response:
        return Response(200, "text/html; charset=utf-8", html.encode())

    def vega_bundle(self) -> bytes:
        """Vega, Vega-Lite and vega-embed as one script, from the vl-convert wheel (built once, ~2 s)."""
        with self._vega_lock:
            if self._vega is None:
                import vl_convert

                self._vega = vl_convert.javascript_bundle("window.vegaEmbed = vegaEmbed;").encode()
            return self._vega

    def _static(self, name: str) -> Response:
        if name == "vega.js":
            return Response(200, STATIC_TYPES[".js"], self.vega_bundle(), {"Cache-Control": "max-age=3600"})
        files = {p.name: p for p in STATIC_DIR.iterdir() if p.suffix in STATIC_TYPES}  # a fixed table
        if name not in files:
            return json_response({"error": f"no file {name!r}", "fix": "the pages load their own files"}, 404)
        return Response(200, STATIC_TYPES[files[name].suffix], files[name].read_bytes())

    # -- endpoints -----------------------------------------------------------------------------------

    def _overview(self, _params: dict[str, str]) -> Response:
        return self.cached("overview", self._compute_overview)

    def _compute_overview(self) -> Response:
        con = self.warehouse.cursor()
        try:
            counts = []
            for column, tables in OVERVIEW_COLUMNS.items():
                union = " union all ".join(f"select {column} as value from {t}" for t in tables)
                for value, rows in con.execute(
                    f"select value, count(*) from ({union}) where value is not null group by value order by value"
                ).fetchall():
                    counts.append({"what": column, "value": value, "rows": rows})
            runs = json_rows(con.sql(
                "select run_id, suite, model, kind, status, seed, started_at, ended_at from runs "
                "order by suite, model, run_id"
            ).to_arrow_table())  # fmt: skip
            models = json_rows(con.sql(
                "select suite, model, count(distinct step) as steps, min(step) as first_step, "
                "max(step) as last_step, count(distinct run_id) as runs from checkpoints "
                "group by suite, model order by suite, model"
            ).to_arrow_table())  # fmt: skip
            losses = json_rows(con.sql(
                "select run_id, step, value from scalars where name = 'loss' order by run_id, step"
            ).to_arrow_table())  # fmt: skip
        finally:
            con.close()
        return json_response(
            {
                "counts": counts,
                "models": models,
                "runs": runs,
                "loss_chart": figures.scalar_figure(losses, "loss"),
            }
        )

    def _runs(self, _params: dict[str, str]) -> Response:
        con = self.warehouse.cursor()
        try:
            runs = json_rows(con.sql(
                "select run_id, suite, model, kind, status, seed, started_at, ended_at, "
                "(select count(*) from scalars s where s.run_id = r.run_id) as scalars "
                "from runs r order by suite, model, run_id"
            ).to_arrow_table())  # fmt: skip
            names = [n for (n,) in con.execute("select distinct name from scalars order by name").fetchall()]
        finally:
            con.close()
        return json_response({"runs": runs, "scalar_names": names})

    def _scalars(self, params: dict[str, str]) -> Response:
        """One logged scalar of the chosen runs (``runs=a,b``, ``name=loss``), as rows and an overlay chart."""
        chosen = [r for r in params.get("runs", "").split(",") if r]
        name = params.get("name", "loss")
        if not chosen:
            raise ParameterError("no runs chosen", fix="tick the runs to compare")
        con = self.warehouse.cursor()
        try:
            known = {r for (r,) in con.execute("select run_id from runs").fetchall()}
            unknown = [r for r in chosen if r not in known]
            if unknown:
                from layerlake.core.choices import did_you_mean

                raise ParameterError(
                    f"run {unknown[0]!r} is not in the warehouse{did_you_mean(unknown[0], sorted(known))}",
                    fix="pick runs from the list (`layerlake runs` lists them too)",
                )
            rows = json_rows(con.sql(
                "select run_id, step, value from scalars where list_contains($runs, run_id) and name = $name "
                "order by run_id, step", params={"runs": chosen, "name": name},
            ).to_arrow_table())  # fmt: skip
        finally:
            con.close()
        return json_response({"rows": rows, "chart": figures.scalar_figure(rows, name)})

    def _sql(self, params: dict[str, str]) -> Response:
        """One page of a console statement's result, run in a worker process under the limits; the
        worker sends only that page, its long cells cut and within a byte budget (``warehouse.clip``):
        whatever the statement, the answer stays small."""
        text = params.get("q", "")
        page = _page_number(params.get("page", "0"))
        clip = Clip(page * PAGE_ROWS, (page + 1) * PAGE_ROWS, page_bytes=SQL_PAGE_BYTES)
        with self.sandbox().query(text, what="the SQL console", clip=clip) as result:
            table = pa.Table.from_batches(list(result), result.schema)
            summary = result.clip or {}
        return json_response({
            "columns": table.column_names, "rows": console_rows(table), "total": summary.get("rows", 0),
            "page": page, "page_rows": PAGE_ROWS, "cut": _cut_note(summary),
        })  # fmt: skip

    def _recipe(self, params: dict[str, str]) -> Response:
        from layerlake.queries.loader import bind_params, load_recipe, recipe_names

        name = params.pop("name", "")
        if name not in recipe_names():  # the fixed list: a request never names a file
            raise ParameterError(f"unknown recipe {name!r}", fix=f"use one of: {', '.join(recipe_names())}")
        fmt = params.pop("format", "json")
        measure = params.pop("measure", "") or None
        window = _window(params)
        recipe = load_recipe(name)
        figures.check_measure(recipe, measure)
        measure = measure or next(iter(figures.measures(recipe.plot)), None)  # one key for "the default"
        given = form_values(recipe, params)
        bound = bind_params(recipe, given)
        if fmt not in ("json", "csv", "parquet"):
            raise ParameterError(
                f"unknown format {fmt!r}",
                fix="ask for csv or parquet (the download links of a recipe page), or leave the format out",
            )
        key = ("recipe", name, fmt, measure, window, json.dumps(bound, sort_keys=True, default=str))
        return self.cached(key, lambda: self._compute_recipe(recipe, bound, fmt, measure, window))

    def _compute_recipe(
        self,
        recipe: Any,
        bound: dict[str, Any],
        fmt: str,
        measure: str | None,
        window: tuple[int, int, int, int] | None = None,
    ) -> Response:
        name = recipe.name
        points = figures.parse_spec(recipe.plot)[1].get("points") if fmt == "json" else None
        key = ("tables", name, points, json.dumps(bound, sort_keys=True, default=str))
        # the result once per parameters: another page of panels or window size only draws again
        table, layers = self.cached(key, lambda: self._run_recipe(recipe, bound, points))
        if fmt in ("csv", "parquet"):
            sink = io.BytesIO()
            write_stream(table.to_reader(), fmt, sink)
            kind = "text/csv" if fmt == "csv" else "application/vnd.apache.parquet"
            return Response(200, kind, sink.getvalue(),
                            {"Content-Disposition": f'attachment; filename="{name}.{fmt}"'})  # fmt: skip
        return json_response({
            "columns": table.column_names, "rows": json_rows(table.slice(0, PAGE_ROWS * 10)),
            "total": table.num_rows, "chart": figures.recipe_figure(recipe, bound, table, measure, layers, window),
        })  # fmt: skip

    def _run_recipe(self, recipe: Any, bound: dict[str, Any], points: str | None) -> tuple[pa.Table, Any]:
        """The recipe's result and, for a bands figure, its companion's per-layer rows (same parameters)."""
        from layerlake.queries.loader import load_recipe, run_recipe

        con = self.warehouse.cursor()
        try:
            with limited(con, self.limits):
                companion = load_recipe(points) if points else None
                with shared_staging(con, recipe, companion, bound):
                    table = run_recipe(con, recipe.name, bound)
                    # a bands figure's hover points: the per-layer rows of the recipe it names, same parameters
                    layers = run_recipe(con, points, _shared(companion, bound)) if companion else None
        finally:
            con.close()
        return table, layers

    def _recipe_page(self, params: dict[str, str]) -> Response:
        from layerlake.queries.loader import recipe_names

        name = params.get("name", "")
        if name not in recipe_names():
            return Response(404, "text/plain", b"no such recipe")
        return self._form_page(name, name)

    def _named_page(self, name: str, title: str):
        return lambda _params: self._form_page(name, title)

    def _form_page(self, name: str, title: str) -> Response:
        """A recipe's form, its stored-value parameters (model, site, layer, step ...) as selects
        filled from the warehouse."""
        from layerlake.queries.loader import load_recipe

        recipe = load_recipe(name)

        def page() -> Response:
            stored = self._stored(recipe)
            empty = _nothing_stored(recipe, stored)
            return self._page(pages.recipe_form(recipe, stored, title, self._scoped(recipe), empty))

        return self.cached(("form", name, title), page)

    def _stored(self, recipe: Any) -> dict[str, list[Any]]:
        """The stored values a recipe's form offers: parameter -> sorted values."""
        return self.cached(("stored", recipe.name), lambda: self._compute_stored(recipe))

    def _compute_stored(self, recipe: Any) -> dict[str, list[Any]]:
        """Each stored-value parameter's values in the tables the recipe reads (``read_tables``: the
        checkpoint x checkpoint page offers only models that have sketches)."""
        from layerlake.queries.loader import read_tables
        from layerlake.queries.stored_values import NAMED, stored_values, table_columns, within

        tables = read_tables(recipe)
        con = self.warehouse.cursor()
        try:
            columns = table_columns(con)
            stored = {
                p.name: sorted(
                    stored_values(con, within(NAMED[p.name], tables), {}, columns), key=figures.natural_key
                )
                for p in recipe.params
                if p.name in NAMED and p.name not in OFFERED_AS_CHOICES
            }
            if "source" in stored and con.execute("select exists (select 1 from sketches)").fetchall()[0][0]:
                stored["source"].insert(0, "computed")  # the CKA computed from sketches: there are some
            return stored
        finally:
            con.close()

    def _scoped(self, recipe: Any) -> dict[str, dict[str, list[Any]]]:
        """For a form that picks one model: each other stored-value parameter's values per model (the
        layers, sites and steps that model has), so the form offers only those of the chosen model."""
        return self.cached(("scoped", recipe.name), lambda: self._compute_scoped(recipe))

    def _compute_scoped(self, recipe: Any) -> dict[str, dict[str, list[Any]]]:
        from layerlake.queries.loader import read_tables
        from layerlake.queries.stored_values import NAMED, stored_values, table_columns, within

        names = [p.name for p in recipe.params]
        if "model" not in names:
            return {}
        models = self._stored(recipe).get("model", [])
        tables = read_tables(recipe)
        con = self.warehouse.cursor()
        try:
            columns = table_columns(con)
            return {
                name: {
                    str(model): sorted(
                        stored_values(con, within(NAMED[name], tables), {"model": [model]}, columns),
                        key=figures.natural_key,
                    )
                    for model in models
                }
                for name in names
                if name in NAMED and name not in (*OFFERED_AS_CHOICES, "model", "models")
            }
        finally:
            con.close()


def _nothing_stored(recipe: Any, stored: dict[str, list[Any]]) -> str:
    """Why ``recipe``'s form cannot run yet: a required parameter naming something stored (the model of
    the checkpoint x checkpoint page) of which the warehouse stores nothing; empty when it can run."""
    from layerlake.queries.loader import read_tables
    from layerlake.queries.stored_values import NAMED, within

    for p in recipe.params:
        if p.name in stored and not stored[p.name] and not p.optional and p.default is None:
            tables = " or ".join(within(NAMED[p.name], read_tables(recipe)).tables)
            return (
                f"no {tables} stored yet: this page draws them. `layerlake extract` stores them for a suite, "
                "a tracked run for its snapshots (layerlake.track(model, probe=...), run.snapshot(step, model))"
            )
    return ""


# Stored-value parameters a form offers as its closed set of choices, not as the values stored.
OFFERED_AS_CHOICES = ("suite", "estimator", "kernel", "tensor", "matrices")
# What the overview counts: each identifying column over the tables that hold it.
OVERVIEW_COLUMNS = {
    "suite": ("checkpoints", "imported_metrics", "scalars"),
    "model": ("checkpoints", "imported_metrics", "scalars"),
    "run_id": ("checkpoints", "imported_metrics", "scalars"),
    "site": ("sketches", "activation_stats", "imported_metrics"),
    "source": ("checkpoints", "imported_metrics"),
    "probe_id": ("checkpoints",),
}


@contextmanager
def shared_staging(con: Any, recipe: Any, companion: Any, bound: dict[str, Any]) -> Iterator[None]:
    """While a figure's two recipes run on ``con`` (one request's cursor): when both read the same single
    staging view with the same parameter values (the convergence page's layer_percentiles bands and
    convergence points both read cka_curves), that view is computed once into a temporary table of the
    same name, which only this cursor sees and which DuckDB finds before the view. Measured on the
    full-study warehouse: the page's data 3.4 s with the CKA of every Gram computed twice."""
    from layerlake.queries.loader import bind_params, recipe_folder
    from layerlake.warehouse.macros import all_staging_params, staging_values

    view = None
    if companion is not None:
        uses = {r.name: set(recipe_folder().get(r.name).uses) for r in (recipe, companion)}
        common = uses[recipe.name] & uses[companion.name]
        staging = all_staging_params()
        values = {k: v for k, v in bound.items() if k in staging}
        theirs = bind_params(companion, _shared(companion, bound))
        if len(common) == 1 and values == {k: v for k, v in theirs.items() if k in staging}:
            view = next(iter(common))
            with staging_values(con, values):
                con.execute(f"CREATE TEMP TABLE {view} AS SELECT * FROM main.{view}")
    try:
        yield
    finally:
        if view is not None:
            con.execute(f"DROP TABLE IF EXISTS temp.{view}")


def _cut_note(summary: dict[str, Any]) -> str:
    """What the console page leaves out (``Clipper.summary()``), in words; empty when nothing."""
    parts = []
    if summary.get("cut_cells"):
        parts.append(
            f"{summary['cut_cells']} long cells cut (texts and bytes after {summary['cell_chars']:,}, "
            f"lists after {summary['cell_items']:,} items)"
        )
    if summary.get("page_full"):
        shown = f"only the first {summary['sent']} rows" if summary["sent"] else "no row"
        parts.append(
            f"{shown} of this page shown: a page holds {summary['page_bytes'] // (1 << 20)} MB at most"
        )
    if parts:
        parts.append("select fewer or shorter columns (left(text, 100), len(list)) to see the rest")
    return "; ".join(parts)


def _shared(recipe: Any, bound: dict[str, Any]) -> dict[str, Any]:
    """The values of ``bound`` that ``recipe`` also takes (a figure's companion recipe)."""
    names = {p.name for p in recipe.params}
    return {k: v for k, v in bound.items() if k in names}


# what the page's script sends beside the form; fit_columns: at most that many panels across (0: as many
# as the width holds), sent again with one fewer when a figure drew wider than its box
WINDOW_FIELDS = ("fit_width", "fit_height", "panel_page", "fit_columns")


def _window(params: dict[str, str]) -> tuple[int, int, int, int] | None:
    """``(width, height, page, columns)`` of the browser window the figure must fit (popped from
    ``params``); None when the request does not say (a link, a download): the figure's first panels, as
    in a file."""
    given = [params.pop(name, "") for name in WINDOW_FIELDS]
    if not any(given):
        return None
    width, height, page, columns = (_page_number(text or "0") for text in given)
    return max(width, 320), max(height, 400), page, columns


def query_params(query: str) -> dict[str, str]:
    """The query string's fields, each given once, as UTF-8 text; ``ParameterError`` otherwise (a
    malformed percent-escape, bytes that are not UTF-8, a field given twice, too many fields)."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False, errors="strict",
                          max_num_fields=MAX_FIELDS)  # fmt: skip
    except UnicodeDecodeError as error:
        raise ParameterError(
            "the query string is not UTF-8 text (a percent-escape of bytes that are no character)",
            fix="encode each value as UTF-8 before percent-escaping it (as a browser's form does)",
        ) from error
    except ValueError as error:  # more than MAX_FIELDS fields
        raise ParameterError(
            f"the query string has more than {MAX_FIELDS} fields", fix="send fewer"
        ) from error
    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params:
            raise ParameterError(f"{key!r} is given twice in the query string", fix=f"give {key}= once")
        if "\x00" in key or "\x00" in value:
            raise ParameterError(f"{key!r} holds a NUL character", fix="remove it")
        params[key] = value
    return params


MAX_FIELDS = 200  # a recipe form has a few dozen at most


def _page_number(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise ParameterError(
            f"page {text!r} is not a page number",
            fix="ask for a page number: 0 for the first page, 1 for the next ...",
        )
    return int(text)


_ASCII_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")


def form_values(recipe: Any, params: dict[str, str]) -> dict[str, Any]:
    """A recipe form's text fields as parameter values: empty means the default, ``true``/``false`` a
    boolean, ``a, b`` a list; numbers stay text for the declared type to parse. Unknown fields are an
    error naming the recipe's parameters."""
    known = {p.name: p for p in recipe.params}
    out: dict[str, Any] = {}
    for key, raw in params.items():
        param = known.get(key)
        if param is None:
            from layerlake.core.choices import did_you_mean

            raise ParameterError(
                f"{key!r} is not a parameter of recipe {recipe.name!r}{did_you_mean(key, list(known))}",
                fix=f"its parameters are: {', '.join(known)}",
            )
        text = raw.strip()
        if not text:
            continue
        if param.is_list:
            out[key] = [part.strip() for part in text.strip("[]").split(",") if part.strip()]
            if param.base == "integer":  # ASCII digits only: int("٣") is 3, and "²".isdigit()
                out[key] = [int(v) if _ASCII_INTEGER.fullmatch(v) else v for v in out[key]]
        elif param.base == "boolean":
            out[key] = {"true": True, "false": False}.get(text.lower(), text)
        elif text.lower() == "null" and param.optional:
            out[key] = None
        else:
            out[key] = text
    return out
