"""The UI over values that broke its pages: config and logged values that are not finite, a run whose
logged values outnumber what a page draws, console answers of any size, statements and run lists too
long for an address, and requests http.server refuses itself. A real warehouse (runs tracked with
``layerlake.track``), a real server, and headless Chromium where the defect was in the page."""

from __future__ import annotations

import json
import math
import re
import socket
import threading
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pytest
from test_ui import get
from test_ui_runs import wait_for

import layerlake
from layerlake.core.duck import QueryLimits
from layerlake.ui.app import UiApp
from layerlake.ui.server import make_server
from layerlake.warehouse import schema
from layerlake.warehouse.layout import MAX_RUN_ID
from layerlake.warehouse.writer import Warehouse

SERIES = ("a_loss", "b_lr", "c_gnorm", "d_acc", "loss")  # loss sorts last: a cut by name order lost it
BIG_STEPS = 5_000
MANY = 40  # runs whose ids, all ticked, make an address longer than the runs table sends


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Run ``cfg`` with an infinite and a NaN config value and a NaN, an infinite and a finite logged
    loss after three ordinary ones; run ``ok`` with finite ones; run ``big`` logging five series over
    5,000 steps (25,000 values); ``MANY`` runs with long ids."""
    root = tmp_path_factory.mktemp("ui_values") / "warehouse"
    with layerlake.track(suite="s", model_name="m", run_id="cfg", warehouse=root, quiet=True,
                         config={"inf": math.inf, "nan": math.nan, "neg": -math.inf, "lr": 0.1}) as run:  # fmt: skip
        for step in range(3):
            run.log(step, loss=3.0 - step)
    odd = [(3, math.nan), (4, math.inf), (5, -math.inf), (6, math.nan)]  # the last logged loss is NaN
    now = datetime.now(timezone.utc)
    rows = [{"step": s, "name": "loss", "value": v, "logged_at": now, "rank": None} for s, v in odd]
    table = pa.Table.from_pylist(rows, schema=schema.SCALARS.arrow_schema())
    Warehouse(root).commit("scalars.cfg.9", "s", "m", {"scalars": table}, {"kind": "scalars"}, run_id="cfg")
    with layerlake.track(suite="s", model_name="m", run_id="ok", warehouse=root, quiet=True,
                         config={"inf": 1.0, "nan": 2.0, "neg": 3.0, "lr": 0.2}) as run:  # fmt: skip
        for step in range(3):
            run.log(step, loss=2.0 - step / 2)
    with layerlake.track(suite="s", model_name="big", run_id="big", warehouse=root, quiet=True) as run:
        for step in range(BIG_STEPS):
            run.log(step, a_loss=1 / (step + 1), b_lr=0.1, c_gnorm=(step * 7919) % 1000, d_acc=step / BIG_STEPS,
                    loss=5.0 - step / 1000 + (0.25 if step == 2345 else 0.0))  # fmt: skip
    for i in range(MANY):
        with layerlake.track(suite="many", model_name="m", run_id=f"many-{i:02d}-" + "x" * (MAX_RUN_ID - 8),
                             warehouse=root, quiet=True) as run:  # fmt: skip
            run.log(0, loss=float(i))
    return root


@pytest.fixture(scope="module")
def server(root):
    app = UiApp(root, limits=QueryLimits(timeout_s=60.0, memory_limit="2GB"))
    httpd = make_server(app)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    host, port = httpd.server_address[:2]
    yield f"http://{host}:{port}"
    httpd.shutdown()
    httpd.server_close()
    app.close()


def strict_json(body: bytes):
    """JSON as every parser reads it: the bare tokens NaN, Infinity and -Infinity are an error."""

    def refuse(token: str):
        raise ValueError(f"{token} is not JSON")

    return json.loads(body, parse_constant=refuse)


def api(server: str, path: str, **params) -> tuple[int, dict]:
    status, kind, body = get(f"{server}{path}?{urllib.parse.urlencode(params)}")
    assert kind == "application/json", (path, kind, body[:200])
    return status, strict_json(body)


def post(server: str, path: str, fields: dict[str, str], headers: dict[str, str] | None = None):
    request = urllib.request.Request(
        server + path, data=urllib.parse.urlencode(fields).encode(), method="POST", headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


# --- values that are not finite ---------------------------------------------------------------------------


def test_every_answer_is_json_when_config_and_logged_values_are_not_finite(server):
    status, table = api(server, "/api/runs_table")
    assert status == 200
    rows = {r["run_id"]: r for r in table["rows"]}
    assert {"cfg", "ok"} <= set(rows)
    # a config stores them as JSON strings when the run starts (warehouse.runs.json_config); shown as stored
    assert (rows["cfg"]["config.inf"], rows["cfg"]["config.nan"], rows["cfg"]["config.neg"]) == (
        "Infinity",
        "NaN",
        "-Infinity",
    )
    assert (
        rows["cfg"]["last.loss"] == "nan" and rows["ok"]["last.loss"] == 1.0
    )  # the last logged value is NaN
    status, run = api(server, "/api/run", id="cfg")
    assert status == 200 and run["config"]["inf"] == "Infinity" and run["config"]["nan"] == "NaN"
    drawn = [r["value"] for r in run["logged"]]
    assert drawn == [3.0, 2.0, 1.0, None, None, None, None], "a figure's value that is not finite is null"
    for path, params in (
        ("/api/run_updates", {"id": "cfg", "after": "1"}),
        ("/api/scalars", {"runs": "cfg,ok", "name": "loss"}),
        ("/api/overview", {}),
        ("/api/sweep", {}),
        ("/api/run_figures", {"id": "cfg"}),
    ):
        status, _ = api(server, path, **params)
        assert status == 200, path


def test_the_console_tells_nan_and_infinities_from_null(server):
    q = "select 'nan'::double as a, 'inf'::double as b, '-inf'::float as c, null::double as d, 0.5::double as e"
    status, data = api(server, "/api/sql", q=q)
    assert status == 200 and data["rows"] == [{"a": "nan", "b": "inf", "c": "-inf", "d": None, "e": 0.5}]


# --- a run with more logged values than a page draws ------------------------------------------------------


def test_every_logged_series_is_sent_thinned_with_its_ends_and_extremes(server):
    status, data = api(server, "/api/run", id="big")
    assert status == 200
    by_name: dict[str, list[dict]] = {}
    for r in data["logged"]:
        by_name.setdefault(r["name"], []).append(r)
    assert sorted(by_name) == list(SERIES), "every series is drawn, loss too"
    assert len(data["logged"]) <= 20_000 + 3 * len(SERIES)
    loss = by_name["loss"]
    steps = [r["step"] for r in loss]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == BIG_STEPS - 1 == data["last_step"]
    assert 2345 in steps, "the highest value is kept (a spike a thinning would skip)"
    gaps = {b - a for a, b in zip(steps, steps[1:], strict=False)}
    assert max(gaps) <= 2, "evenly spaced by step"
    assert data["thinned"] == [{"name": n, "stored": BIG_STEPS, "shown": len(by_name[n])} for n in SERIES]
    _, updates = api(server, "/api/run_updates", id="big", after="10", snapshots="0")  # a live page's ask
    assert {r["name"] for r in updates["logged"]} == set(SERIES) and updates["thinned"]
    _, few = api(server, "/api/run_updates", id="big", after=str(BIG_STEPS - 3), snapshots="0")
    assert len(few["logged"]) == 2 * len(SERIES) and few["thinned"] == []


# --- console answers of any size --------------------------------------------------------------------------


def test_a_console_page_is_cut_to_its_budget_whatever_the_statement(root):
    app = UiApp(root, limits=QueryLimits(timeout_s=120.0, memory_limit="2GB"))
    try:
        answer = app.respond(
            "GET", "/api/sql", urllib.parse.urlencode({"q": "select repeat('x', 100000000) as big, 1 as n"})
        )
        assert answer.status == 200 and len(answer.body) < 10_000, len(answer.body)
        data = strict_json(answer.body)
        assert data["total"] == 1 and data["rows"][0]["n"] == 1
        assert (
            data["rows"][0]["big"].endswith("… (99999000 more characters)")
            and "1 long cells cut" in data["cut"]
        )
        wide = "select list_transform(range(100), lambda x: repeat('z', 900)) as l, repeat('y', 90000) as t from range(250)"
        answer = app.respond("GET", "/api/sql", urllib.parse.urlencode({"q": wide}))
        data = strict_json(answer.body)
        assert answer.status == 200 and len(answer.body) < 1.3 * (1 << 20), len(answer.body)
        assert data["total"] == 250 and 0 < len(data["rows"]) < 100
        assert f"only the first {len(data['rows'])} rows of this page shown" in data["cut"]
    finally:
        app.close()


def test_the_worker_sends_only_the_page_cut(root):
    """The server receives the cut page, not the answer (which made it hold 1.4 GB for a 300 MB cell)."""
    from layerlake.warehouse.clip import Clip
    from layerlake.warehouse.sandbox import Sandbox

    with Sandbox(root, limits=QueryLimits(timeout_s=120.0, memory_limit="2GB")) as sandbox:
        statement = "select range as i, repeat('x', 50000000) as s from range(3)"
        with sandbox.query(statement, clip=Clip(1, 2)) as result:
            received = list(result)
        assert sum(b.nbytes for b in received) < 5_000 and sum(b.num_rows for b in received) == 1
        assert received[0].column("i").to_pylist() == [1]
        assert result.clip["rows"] == 3 and result.clip["cut_cells"] == 1


# --- requests too long for an address, and what http.server refuses ---------------------------------------


def raw(server: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    host, port = urllib.parse.urlsplit(server).netloc.split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize(
    ("request_line", "status"),
    [(b"GET /api/sql?q=" + b"x" * 70_000 + b" HTTP/1.1", 414), (b"OPTIONS / HTTP/1.1", 405),
     (b"TRACE / HTTP/1.1", 405), (b"CONNECT / HTTP/1.1", 405), (b"PROPFIND / HTTP/1.1", 405),
     (b"GET / HTTP/9.9", 505), (b"GARBAGE", 400)],
)  # fmt: skip
def test_what_http_server_refuses_is_json_with_the_apps_headers(server, request_line, status):
    netloc = urllib.parse.urlsplit(server).netloc.encode()
    got, headers, body = raw(server, request_line + b"\r\nHost: " + netloc + b"\r\n\r\n")
    assert got == status
    assert (
        headers["content-type"] == "application/json"
        and "default-src 'self'" in headers["content-security-policy"]
    )
    assert headers["x-content-type-options"] == "nosniff" and strict_json(body)["error"]


def test_a_long_statement_and_many_runs_are_posted_with_the_same_checks(server):
    statement = (
        "select count(*) as n from runs where run_id in ("
        + ",".join(f"'r{i:05d}'" for i in range(8000))
        + ")"
    )
    assert len(statement) > 65_536
    status, _, body = post(server, "/api/sql", {"q": statement})
    assert status == 200 and strict_json(body)["rows"] == [{"n": 0}]
    ids = [f"many-{i:02d}-" + "x" * (MAX_RUN_ID - 8) for i in range(MANY)] * 18  # 70 KB of run ids
    status, _, body = post(server, "/api/scalars", {"runs": ",".join(ids), "name": "loss"})
    assert status == 200 and len(strict_json(body)["rows"]) == MANY
    status, _, body = post(server, "/api/sql", {"q": "select 1"}, {"Origin": "http://evil.example"})
    assert status == 403 and "another site" in strict_json(body)["error"]
    status, _, body = post(server, "/api/runs_table", {"search": "x"})
    assert status == 405 and strict_json(body)["error"]
    status, _, body = post(server, "/api/sql", {"q": "delete from runs"})
    assert status == 400 and "read-only" in strict_json(body)["error"]


# --- in a browser ---------------------------------------------------------------------------------------


def status_of(driver) -> tuple[str, str]:
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.ID, "status")
    return element.text, element.get_attribute("class")


def test_the_runs_table_and_a_run_page_show_values_that_are_not_finite(browser, server):
    from selenium.webdriver.common.by import By

    browser.get(server + "/runs")
    wait_for(
        browser, lambda d: f"of {MANY + 3} runs" in status_of(d)[0], f"the runs table: {status_of(browser)}"
    )
    row = browser.find_element(By.CSS_SELECTOR, "#runs tr[data-run='cfg']").text
    assert "Infinity" in row and "NaN" in row and "-Infinity" in row  # the config, as stored
    assert row.split()[-1] == "nan"  # the last logged value, a float: its text
    browser.get(server + "/run?id=cfg")
    wait_for(browser, lambda d: "7 logged values" in status_of(d)[0], f"the run page: {status_of(browser)}")
    assert status_of(browser)[1] != "error"
    config = browser.find_element(By.ID, "config").text
    assert "inf" in config and "nan" in config
    assert browser.find_elements(By.CSS_SELECTOR, "#logged svg")


def test_a_long_run_page_draws_every_series_and_says_which_are_thinned(browser, server):
    from selenium.webdriver.common.by import By

    browser.get(server + "/run?id=big")
    wait_for(browser, lambda d: "logged values" in status_of(d)[0], "the run page")
    assert browser.find_elements(By.CSS_SELECTOR, "#logged canvas, #logged svg")
    note = browser.find_element(By.ID, "logged-note").text
    assert "thinned" in note and all(re.search(f"{n}: 4,00[0-3] of 5,000", note) for n in SERIES), note


def test_the_console_runs_a_statement_too_long_for_an_address(browser, server):
    from selenium.webdriver.common.by import By

    browser.get(server + "/sql")
    wait_for(browser, lambda d: "rows" in status_of(d)[0], "the example query")
    statement = (
        "select count(*) as n from runs where run_id in ("
        + ",".join(f"'r{i:05d}'" for i in range(8000))
        + ")"
    )
    browser.execute_script("document.getElementById('q').value = arguments[0]", statement)
    browser.find_element(By.CSS_SELECTOR, "#sql-form button").click()
    wait_for(browser, lambda d: "1 rows; page 1 of 1" in status_of(d)[0], f"the answer: {status_of(browser)}")
    browser.execute_script(
        "document.getElementById('q').value = \"select repeat('x', 5000) as s, {'a': 1} as st\""
    )
    browser.find_element(By.CSS_SELECTOR, "#sql-form button").click()
    wait_for(browser, lambda d: "1 long cells cut" in status_of(d)[0], f"the cut note: {status_of(browser)}")
    cells = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#result td")]
    assert cells[1] == '{"a":1}' and "more characters" in cells[0]


def test_every_run_ticked_opens_in_the_compare_page(browser, server):
    from selenium.webdriver.common.by import By

    browser.get(server + "/runs?search=many-")
    wait_for(browser, lambda d: f"{MANY} of" in status_of(d)[0], "the many runs")
    for box in browser.find_elements(By.CSS_SELECTOR, "#runs tbody input[type=checkbox]"):
        box.click()
    browser.find_element(By.ID, "compare").click()
    wait_for(browser, lambda d: f"{MANY} runs compared; {MANY} values of loss" in status_of(d)[0],
             f"the runs overlaid: {status_of(browser)}")  # fmt: skip
    assert "from=runs" in browser.current_url


# --- a warehouse of imported metrics only -------------------------------------------------------------------


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """The paper's values imported into an empty warehouse (no sketches, no runs that logged values),
    served: ``layerlake import-metrics`` as the README shows it, then ``layerlake ui``."""
    from layerlake.cli.main import main

    root = tmp_path_factory.mktemp("ui_imported") / "warehouse"
    sample = Path(__file__).resolve().parent / "fixtures" / "pythia-paper" / "metrics-sample.csv"
    argv = [
        "import-metrics",
        str(sample),
        "--source",
        "pythia-paper",
        "--suite",
        "pythia",
        "--root",
        str(root),
    ]
    assert main(argv) == 0
    app = UiApp(root)
    httpd = make_server(app)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield "http://{}:{}".format(*httpd.server_address[:2])
    httpd.shutdown()
    httpd.server_close()
    app.close()


@pytest.mark.parametrize("page", ["/convergence", "/heatmap"])
def test_imported_metrics_alone_are_drawn_by_default_and_every_source_is_offered(browser, imported, page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(imported + page)
    wait_for(browser, lambda d: " rows" in status_of(d)[0], "the imported source's figure")
    assert status_of(browser)[1] != "error" and not status_of(browser)[0].startswith("0 rows")
    assert "pythia-160m-deduped" in browser.find_element(By.ID, "chart").text
    source = Select(browser.find_element(By.NAME, "source"))
    assert source.first_selected_option.text == "pythia-paper"
    assert [o.text for o in source.options] == ["pythia-paper", "(every source)"]  # no computed: no sketches
    source.select_by_visible_text("(every source)")  # null: every source side by side
    wait_for(
        browser, lambda d: " rows" in status_of(d)[0] and "running" not in status_of(d)[0], "every source"
    )
    assert status_of(browser)[1] != "error" and not status_of(browser)[0].startswith("0 rows")


def test_pages_with_nothing_stored_to_draw_say_so_calmly(browser, imported):
    from selenium.webdriver.common.by import By

    browser.get(imported + "/matrix")  # checkpoint x checkpoint: sketches only
    wait_for(browser, lambda d: "nothing to draw yet" in status_of(d)[0], "the empty state")
    assert status_of(browser)[1] != "error"
    assert "no sketches stored yet" in browser.find_element(By.ID, "chart").text
    browser.get(imported + "/compare")  # no run logged a value
    wait_for(browser, lambda d: "runs" in status_of(d)[0], "the compare page")
    assert status_of(browser)[1] != "error"
    assert "nothing logged yet" in browser.find_element(By.ID, "chart").text
