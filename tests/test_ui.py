"""`layerlake ui`: pages drawn by a real browser (headless Chromium) from a real warehouse, offline;
read-only over HTTP; the SQL console's guard and limits; request values never reach a path or SQL text."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import layerlake
from layerlake.core.duck import QueryLimits
from layerlake.ui.app import UiApp
from layerlake.ui.server import make_server
from layerlake.warehouse.synthetic import checkpoint_tables
from layerlake.warehouse.writer import Warehouse

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Two models' checkpoints (real rows through the writer) and a tracked run's logged loss."""
    root = tmp_path_factory.mktemp("ui") / "warehouse"
    store = Warehouse(root)
    rng = np.random.default_rng(0)
    for model in ("alpha", "beta"):
        for step in (0, 10, 20):
            grams = {
                (layer, site): np.cov(rng.normal(size=(6, 8)))
                for layer in (0, 1)
                for site in ("ov", "mlp_out")
            }
            spectra = {(layer, "dense"): np.sort(rng.random(4))[::-1] for layer in (0, 1)}
            tables = checkpoint_tables(model, step, grams, spectra, d=8)
            sketches = tables["sketches"]  # the same Grams stored for the debiased estimator too
            column = sketches.schema.get_field_index("estimator")
            debiased = sketches.set_column(
                column, sketches.schema.field(column), pa.array(["debiased"] * sketches.num_rows)
            )
            tables["sketches"] = pa.concat_tables([sketches, debiased])
            store.commit(f"{model}-{step}", "s", model, tables, {"step": step})
    for seed in (7, 8):
        with layerlake.track(
            suite="s", model_name="alpha", run_id=f"alpha-seed{seed}", warehouse=root, seed=seed
        ) as run:
            for step in range(5):
                run.log(step, loss=4.0 - step * 0.5 + seed / 100, lr=0.001 * seed)
    return root


@pytest.fixture(scope="module")
def server(root):
    app = UiApp(root, limits=QueryLimits(timeout_s=1.0, memory_limit="256MB"))
    httpd = make_server(app)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]
    yield f"http://{host}:{port}"
    httpd.shutdown()
    httpd.server_close()
    app.close()  # the SQL console's worker processes


def get(url: str, method: str = "GET") -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


def browser_dom(url: str) -> str:
    """The page's DOM after its scripts ran, as headless Chromium renders it."""
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=20000", "--dump-dom", url],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


# --- in a real browser ------------------------------------------------------------------------------------

needs_browser = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium: .ci/run installs it (apt-get install chromium)"
)


@needs_browser
def test_the_overview_shows_runs_what_is_stored_and_the_loss_chart(server):
    dom = browser_dom(server + "/")
    assert "alpha-seed7" in dom and ">beta<" in dom  # the run, and a model counted
    assert re.search(r"<td>beta</td><td>3</td><td>0</td><td>20</td>", dom), "beta's 3 steps, 0 to 20"
    assert re.search(r'<div id="chart"[^>]*>.*?<(svg|canvas)', dom, re.S), "no chart was drawn"
    assert 'class="error"' not in dom


@needs_browser
def test_a_recipe_page_runs_its_form_and_draws_the_result(server):
    dom = browser_dom(server + "/recipe?name=convergence")
    assert re.search(r'<div id="chart"[^>]*>.*?<svg', dom, re.S), "no chart was drawn"
    assert ">alpha<" in dom and "download csv" in dom and 'class="error"' not in dom


FIGURE_PAGE_WORDS = {  # page -> what its drawn figure must say (title, axis, legend, panel)
    "/convergence": ("Spread over layers of CKA to the reference checkpoint", "CKA to the reference checkpoint",
                     "median over layers", "one layer (hover for its values)", "training step"),
    "/heatmap": ("CKA of each layer to the reference checkpoint", "one band per stored checkpoint", "layer"),
    "/matrix": ("CKA between the checkpoints of alpha: layer 0, site mlp_out", "training step"),
    "/ranks": ("PER (effective rank / k) of each layer", "training step", "tensor"),
}  # fmt: skip


@needs_browser
@pytest.mark.parametrize("page", sorted(FIGURE_PAGE_WORDS))
def test_every_figure_page_draws_its_figure_with_words(server, page):
    dom = browser_dom(server + page)
    assert 'class="error"' not in dom, dom[dom.find('class="error"') :][:300]
    drawn = re.search(r'<div id="chart"[^>]*>(.*?)</svg>', dom, re.S)
    assert drawn, f"{page}: no figure was drawn"
    text = html.unescape(re.sub(r"<[^>]+>", " ", drawn[1]))
    for words in FIGURE_PAGE_WORDS[page]:
        assert words in text, (page, words)
    assert "<option selected" in dom or "selected=" in dom  # stored values offered as choices


@needs_browser
def test_the_sql_console_pages_a_result_in_the_browser(server):
    dom = browser_dom(server + "/sql")
    assert ">checkpoints<" in dom and ">alpha<" in dom and "page 1 of 1" in dom


# --- over HTTP --------------------------------------------------------------------------------------------


def test_every_script_and_stylesheet_comes_from_the_server(server):
    for page in ("/", "/sql", "/recipes", "/recipe?name=stabilisation"):
        status, _, body = get(server + page)
        assert status == 200
        html = body.decode()
        sources = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert sources and all(s.startswith("/") for s in sources), sources  # no CDN, no other host
    status, kind, bundle = get(server + "/static/vega.js")
    assert status == 200 and "javascript" in kind and b"vegaEmbed" in bundle


def test_it_binds_this_machine_only_unless_told_and_warns_then(root, tmp_path):
    from layerlake.ui.server import ui_parser

    assert ui_parser().parse_args([]).host == "127.0.0.1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "layerlake.cli", "ui", "--root", str(root), "--port", "0", "--host", "0.0.0.0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert re.search(r"serving .* at http://0\.0\.0\.0:\d+/", line), line
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "anyone who can reach this machine can read the warehouse" in err


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_no_endpoint_writes(server, root, method):
    before = (root / "_manifest" / "commits.jsonl").read_bytes()
    for path in ("/", "/api/sql?q=select+1", "/api/recipe?name=stabilisation"):
        status, kind, _ = get(server + path, method)
        assert status == (415 if (method, path[:8]) == ("POST", "/api/sql") else 405)  # POST: a form only
        assert kind == "application/json"
    request = urllib.request.Request(server + "/api/sql", data=b"q=delete+from+checkpoints", method=method)
    with pytest.raises(urllib.error.HTTPError) as refused:  # a statement POSTed is checked as one sent by GET
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == (400 if method == "POST" else 405)
    assert (root / "_manifest" / "commits.jsonl").read_bytes() == before


@pytest.mark.parametrize(
    "path",
    ["/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fserver.py", "/static/style.css/../../app.py",
     "/api/recipe?name=../../etc/passwd", "/recipe?name=../queries/stabilisation"],
)  # fmt: skip
def test_no_request_value_reaches_a_file_path(server, path):
    status, _, body = get(server + path)
    assert status in (400, 404)
    assert b"import" not in body and b"root:" not in body


@pytest.mark.parametrize(
    "statement",
    ["delete from checkpoints", "copy (select 1) to '/tmp/x.csv'", "attach '/tmp/x.db'", "install httpfs",
     "select 1; drop view checkpoints", "set threads = 1"],
)  # fmt: skip
def test_the_console_refuses_what_layerlake_sql_refuses(server, statement):
    from layerlake.core.duck import read_only_statement
    from layerlake.core.errors import SqlError

    with pytest.raises(SqlError) as refused:
        read_only_statement(statement, "the SQL console")  # the same check, naming where it came from
    status, _, body = get(server + "/api/sql?" + urllib.parse.urlencode({"q": statement}))
    assert status == 400 and json.loads(body)["error"] == refused.value.message


def test_the_console_has_the_same_time_limit(server):
    endless = "select count(*) from range(1000000000000) a, range(1000) b"
    status, _, body = get(server + "/api/sql?" + urllib.parse.urlencode({"q": endless}))
    assert status == 400 and "ran longer than 1 s and was stopped" in json.loads(body)["error"]
    status, _, body = get(server + "/api/sql?q=select+42+as+answer")  # the server still answers
    assert status == 200 and json.loads(body)["rows"] == [{"answer": 42}]


def test_the_console_pages_a_large_result(server):
    query = urllib.parse.urlencode({"q": "select range as i from range(250)", "page": "2"})
    status, _, body = get(server + "/api/sql?" + query)
    data = json.loads(body)
    assert status == 200 and data["total"] == 250 and [r["i"] for r in data["rows"]] == list(range(200, 250))
    status, _, body = get(server + "/api/sql?q=select+1&page=-1")
    assert status == 400 and "page" in json.loads(body)["error"]


@pytest.mark.parametrize(
    ("query", "message"),
    [("name=stabilisation&threshold=0.9;drop+table+x", "$threshold is not a valid value"),
     ("name=step_similarity&model=alpha'+or+1=1--", "$model is not a valid value"),
     ("name=step_similarity&model=gamma", "model 'gamma' is not in the warehouse"),
     ("name=stabilisation&bogus=1", "'bogus' is not a parameter of recipe 'stabilisation'")],
)  # fmt: skip
def test_recipe_values_are_checked_and_bound_never_formatted(server, query, message):
    status, _, body = get(server + "/api/recipe?" + query)
    assert status == 400 and message in json.loads(body)["error"]


def test_a_recipe_result_downloads_as_csv_and_parquet(server, tmp_path):
    import pyarrow.parquet as pq

    status, _, body = get(server + "/api/recipe?name=step_similarity&model=beta&site=ov")
    rows = json.loads(body)["rows"]
    assert status == 200 and len(rows) == 9 and {r["model"] for r in rows} == {"beta"}
    status, kind, csv = get(server + "/api/recipe?name=step_similarity&model=beta&site=ov&format=csv")
    assert status == 200 and kind == "text/csv" and len(csv.decode().strip().splitlines()) == 10
    status, _, data = get(server + "/api/recipe?name=step_similarity&model=beta&site=ov&format=parquet")
    (tmp_path / "r.parquet").write_bytes(data)
    assert status == 200 and pq.read_table(tmp_path / "r.parquet").num_rows == 9


@pytest.mark.parametrize("fmt", ["xlsx", "JSON", "csv;"])
def test_an_unknown_download_format_is_refused_naming_the_formats(root, fmt):
    app = UiApp(root)
    answer = app.respond("GET", "/api/recipe", f"name=step_similarity&model=beta&site=ov&format={fmt}")
    body = json.loads(answer.body)
    assert answer.status == 400, body
    assert f"unknown format {fmt!r}" in body["error"] and "csv" in body["fix"] and "parquet" in body["fix"]


def test_new_rows_show_without_a_restart(root, server):
    status, _, body = get(server + "/api/sql?q=select+count(*)+as+n+from+checkpoints")
    before = json.loads(body)["rows"][0]["n"]
    rng = np.random.default_rng(1)
    # every layer and site, as the fixture's checkpoints: later tests see the same panels
    grams = {(layer, site): np.cov(rng.normal(size=(6, 8))) for layer in (0, 1) for site in ("ov", "mlp_out")}
    Warehouse(root).commit(
        "beta-30", "s", "beta", checkpoint_tables("beta", 30, grams, {}, d=8), {"step": 30}
    )
    status, _, body = get(server + "/api/sql?q=select+count(*)+as+n+from+checkpoints")
    assert json.loads(body)["rows"][0]["n"] == before + 1


def test_runs_compare_over_a_logged_value(server):
    status, _, body = get(server + "/api/runs")
    data = json.loads(body)
    assert {r["run_id"] for r in data["runs"] if r["scalars"]} == {"alpha-seed7", "alpha-seed8"}
    assert data["scalar_names"] == ["loss", "lr"]
    status, _, body = get(server + "/api/scalars?runs=alpha-seed7,alpha-seed8&name=lr")
    rows = json.loads(body)["rows"]
    assert status == 200 and len(rows) == 10 and {r["value"] for r in rows} == {0.007, 0.008}
    assert json.loads(body)["chart"]["encoding"]["color"]["field"] == "run_id"
    status, _, body = get(server + "/api/scalars?runs=alpha-seed9&name=loss")
    assert (
        status == 400
        and "run 'alpha-seed9' is not in the warehouse (did you mean" in json.loads(body)["error"]
    )


# --- answers computed once ------------------------------------------------------------------------------


class FormDefaults(HTMLParser):
    """What a browser sends when a form is submitted untouched: each field's preselected value."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[str, list[str]] = {}
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "input" and a.get("value"):
            self.values.setdefault(a["name"], []).append(a["value"])
        elif tag == "select":
            self._select = a["name"]
        elif tag == "option" and self._select and "selected" in a:
            self._option = True
            self.values.setdefault(self._select, [])
            self._pending = a.get("value")

    def handle_data(self, data: str) -> None:
        if getattr(self, "_option", False):
            self.values[self._select].append(self._pending if self._pending is not None else data)
            self._option = False

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None


def test_warm_up_computes_what_each_figure_page_asks_first(root):
    from layerlake.ui import pages

    app = UiApp(root)
    app.warm()
    ready = len(app.answers._done)
    assert ready >= 1 + 2 * len(pages.FIGURE_PAGES)  # the overview, each page's form and its result
    for path, (recipe, _) in pages.FIGURE_PAGES.items():
        form = FormDefaults()
        form.feed(app.respond("GET", path).body.decode())
        query = urllib.parse.urlencode(
            {"name": recipe, **{k: ",".join(v) for k, v in form.values.items() if any(v)}}
        )
        answer = app.respond("GET", "/api/recipe", query)
        assert answer.status == 200 and json.loads(answer.body)["chart"] is not None, path
    assert len(app.answers._done) == ready, "a page's first data was not among what the warm-up computed"


def test_an_answer_is_computed_once_for_simultaneous_requests_and_again_after_a_change():
    from layerlake.ui.app import AnswerCache

    cache, calls, gate = AnswerCache(), [], threading.Event()

    def slow() -> str:
        calls.append(1)
        gate.wait(5)
        return "answer"

    threads = [threading.Thread(target=cache.get, args=(("k", 1), slow)) for _ in range(4)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert len(calls) == 1 and cache.get(("k", 1), slow) == "answer"
    assert cache.get(("k", 2), slow) == "answer" and len(calls) == 2  # another warehouse version
    with pytest.raises(ZeroDivisionError):
        cache.get(("bad", 1), lambda: 1 / 0)
    assert ("bad", 1) not in cache._done  # an error is not kept


def test_the_convergence_page_computes_its_cka_curves_once_with_the_same_data(root, monkeypatch):
    import contextlib

    from layerlake.ui import app as app_module

    made = []
    real = app_module.shared_staging

    def counting(con, recipe, companion, bound):
        made.append(companion is not None)
        return real(con, recipe, companion, bound)

    monkeypatch.setattr(app_module, "shared_staging", counting)
    shared = app_module.UiApp(root).respond("GET", "/api/recipe", "name=layer_percentiles").body
    monkeypatch.setattr(app_module, "shared_staging", lambda *a: contextlib.nullcontext())
    alone = app_module.UiApp(root).respond("GET", "/api/recipe", "name=layer_percentiles").body
    assert made == [True] and shared == alone and b'"rows"' in shared
    con = app_module.UiApp(root).warehouse.cursor()  # the temporary table never outlives its request
    assert con.sql("select count(*) from duckdb_tables() where temporary").fetchall() == [(0,)]


def test_a_figure_fits_the_window_and_pages_its_panels(root):
    """A window two panels wide and one high shows the convergence bands of alpha, then of beta, each on
    its own page, instead of cutting panels off; without a window (a link), the first panels as in a file."""
    app = UiApp(root)
    pages, panels = [], set()
    for page in (0, 1, 5):  # past the last page: the last
        query = f"name=layer_percentiles&fit_width=700&fit_height=700&panel_page={page}"
        chart = json.loads(app.respond("GET", "/api/recipe", query).body)["chart"]
        paging = chart["usermeta"]["paging"]
        assert (paging["pages"], paging["panels"]) == (2, 4) and chart["facet"]["column"]
        drawn = {(r["panel_row"], r["panel_column"]) for r in chart["data"]["values"] if r.get("panel_row")}
        assert len(drawn) == 2 and chart["spec"]["width"] <= 700 // 2
        pages.append(paging["page"])
        panels |= drawn
    assert pages == [0, 1, 1] and {row for row, _ in panels} == {"alpha", "beta"}
    assert "panels 3-4 of 4 (page 2 of 2)" in chart["title"]["subtitle"]
    whole = json.loads(app.respond("GET", "/api/recipe", "name=layer_percentiles").body)["chart"]
    assert "usermeta" not in whole and len({r["panel_row"] for r in whole["data"]["values"]}) == 2
    bad = app.respond("GET", "/api/recipe", "name=layer_percentiles&fit_width=wide")
    assert bad.status == 400


def test_the_checkpoint_page_offers_models_with_sketches_and_their_own_layers(tmp_path):
    """An imported model (no sketches) named first alphabetically is not offered on the checkpoint x
    checkpoint page; the page opens on the first model that has sketches, with that model's layers only,
    and carries each model's layers for the script to offer when another model is chosen."""
    from layerlake.queries.imports import import_table, validate

    root = tmp_path / "warehouse"
    store = Warehouse(root)
    rng = np.random.default_rng(0)
    for model, layers in (("m1", 2), ("m2", 4)):
        for step in (0, 10):
            grams = {(layer, "mlp_out"): np.cov(rng.normal(size=(6, 8))) for layer in range(layers)}
            store.commit(
                f"{model}-{step}", "s", model, checkpoint_tables(model, step, grams, {}, d=8), {"step": step}
            )
    imported = pa.table({"model": ["aaa"] * 2, "step": [0, 10], "layer": [7, 7], "site": ["mlp_out"] * 2,
                         "metric": ["cka_scores"] * 2, "value": [0.5, 1.0]})  # fmt: skip
    import_table(validate(imported, {}, "test"), root, "s", "paper", {})
    body = UiApp(root).respond("GET", "/matrix").body.decode()
    model = re.search(r"<select name='model'>(.*?)</select>", body)[1]
    assert re.findall(r">([^<]+)</option>", model) == ["m1", "m2"] and "<option selected>m1</option>" in model
    layer = re.search(r"<select name='layer'>(.*?)</select>", body)[1]
    assert re.findall(r">([^<]+)</option>", layer) == ["0", "1"]
    scoped = json.loads(html.unescape(re.search(r"data-scoped='([^']*)'", body)[1]))
    assert scoped["layer"] == {"m1": ["0", "1"], "m2": ["0", "1", "2", "3"]}


def test_an_export_alone_is_served_with_attach_and_no_local_warehouse(root, tmp_path):
    """A collaborator holding only an export: `ui --root EXPORT` points at `--attach EXPORT`, which serves
    the folder alone, as `layerlake sql --attach` and `share attach` do (it refused: no warehouse)."""
    import os

    from layerlake.warehouse.share import export_dataset

    export = tmp_path / "export"
    export_dataset(root, export)
    env = {**os.environ, "LAYERLAKE_DATA": str(tmp_path / "data")}  # no warehouse there, nor under the cwd
    ui = [sys.executable, "-m", "layerlake.cli", "ui", "--port", "0", "--no-warm-up"]
    refused = subprocess.run([*ui, "--root", str(export)], capture_output=True, text=True, env=env, cwd=tmp_path,
                             timeout=120)  # fmt: skip
    assert refused.returncode == 2 and f"--attach {export}" in refused.stderr
    proc = subprocess.Popen([*ui, "--attach", str(export)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=tmp_path)  # fmt: skip
    try:
        line = proc.stdout.readline()
        served = re.search(r"serving (.*) at (http://127\.0\.0\.1:\d+)/", line)
        assert served, (line, proc.stderr.read() if proc.poll() is not None else "")
        assert served[1] == str(export)
        sql = urllib.parse.quote("select count(*) as n from runs")
        status, _, body = get(f"{served[2]}/api/sql?q={sql}")
        assert status == 200, body
        con = layerlake.connect(root)
        try:
            runs = con.sql("select count(*) from runs").fetchall()[0][0]
        finally:
            con.close()
        assert json.loads(body)["rows"] == [{"n": runs}] and runs > 0
        status, _, body = get(f"{served[2]}/api/overview")
        assert status == 200 and b"alpha" in body
        assert get(served[2] + "/")[0] == 200
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert not (tmp_path / "data").exists()
