"""`layerlake ui` answers only requests addressed to it, from its own pages, and every bad query string
with a 400 and a message (never a traceback in the server's log, never an empty reply).

A DNS-rebinding page reaches the server with its own name in ``Host``; a page of another site sends its
``Origin`` or ``Sec-Fetch-Site: cross-site``. Both are refused on every route, over a real socket.
The query string of every route is fuzzed with a small generated set of hostile values, through
``UiApp`` (every combination) and over the socket (a sample, the server's stderr read after).
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

from layerlake.core.duck import QueryLimits
from layerlake.queries.loader import load_recipe
from layerlake.ui import pages
from layerlake.ui.app import UiApp
from layerlake.ui.guard import Served
from layerlake.ui.server import make_server
from layerlake.warehouse.synthetic import checkpoint_tables
from layerlake.warehouse.writer import Warehouse


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    store = Warehouse(tmp_path_factory.mktemp("guard") / "wh")
    rng = np.random.default_rng(0)
    for model in ("alpha", "beta"):
        for step in (0, 10):
            grams = {(layer, "mlp_out"): np.cov(rng.normal(size=(6, 8))) for layer in (0, 1)}
            spectra = {(layer, "dense"): np.sort(rng.random(4))[::-1] for layer in (0, 1)}
            store.commit(f"{model}-{step}", "s", model, checkpoint_tables(model, step, grams, spectra, d=8), {"step": step})  # fmt: skip
    return store.root


@pytest.fixture(scope="module")
def app(root):
    app = UiApp(root, limits=QueryLimits(timeout_s=60, memory_limit="512MB"))
    yield app
    app.close()


@pytest.fixture(scope="module")
def server(app):
    httpd = make_server(app)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()


def request(port: int, path: str, headers: list[tuple[str, str]] | None = None) -> tuple[int, bytes]:
    """GET ``path`` with exactly ``headers`` (default: the right Host)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
    for key, value in headers if headers is not None else [("Host", f"127.0.0.1:{port}")]:
        connection.putheader(key, value)
    connection.endheaders()
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response.status, body


ROUTES = ["/", "/sql", "/recipes", "/recipe?name=stabilisation", *pages.FIGURE_PAGES, "/runs", "/api/runs",
          "/api/overview", "/api/sql?q=select+1", "/api/recipe?name=stabilisation", "/api/scalars?runs=x",
          "/static/app.js", "/static/vega.js", "/compare", "/sweep", "/api/runs_table", "/api/run?id=x",
          "/api/run_updates?id=x", "/api/run_figures?id=x", "/api/sweep", "/api/version", "/static/runs.js"]  # fmt: skip


@pytest.mark.parametrize("path", ROUTES)
def test_a_rebinding_page_reads_nothing_on_any_route(server, path):
    assert request(server, path)[0] in (200, 400)  # addressed right: answered
    for host in ("evil.example", f"evil.example:{server}", f"127.0.0.1.evil.example:{server}", "127.0.0.1",
                 f"127.0.0.1:{server + 1}", f"localhost:{server}x", ""):  # fmt: skip
        status, body = request(server, path, [("Host", host)])
        assert status == 403, (host, status)
        assert "not the address this server serves" in json.loads(body)["error"]
    status, _ = request(server, path, [("Host", f"127.0.0.1:{server}"), ("Host", f"evil.example:{server}")])
    assert status == 403
    assert request(server, path, [])[0] == 403  # no Host at all


@pytest.mark.parametrize(
    ("headers", "answered"),
    [([("Origin", "http://evil.example")], False), ([("Origin", "http://127.0.0.1:{port}.evil.example")], False),
     ([("Origin", "null")], False), ([("Origin", "https://127.0.0.1:{port}")], False),
     ([("Sec-Fetch-Site", "cross-site")], False), ([("Sec-Fetch-Site", "Cross-Site")], False),
     ([("Origin", "http://127.0.0.1:{port}")], True), ([("Origin", "http://localhost:{port}")], True),
     ([("Sec-Fetch-Site", "same-origin")], True), ([("Sec-Fetch-Site", "none")], True)],
)  # fmt: skip
def test_pages_of_other_sites_are_refused(server, headers, answered):
    sent = [("Host", f"localhost:{server}"), *((k, v.format(port=server)) for k, v in headers)]
    status, body = request(server, "/api/sql?q=select+42+as+answer", sent)
    if answered:
        assert status == 200 and json.loads(body)["rows"] == [{"answer": 42}]
    else:
        assert status == 403 and "another site" in json.loads(body)["error"]


def test_the_addresses_served_are_the_loopback_names_and_the_host_given():
    served = Served.at("127.0.0.1", 8765)
    assert all(served.allows(h) for h in ("127.0.0.1:8765", "localhost:8765", "[::1]:8765", "LOCALHOST:8765"))
    assert not any(served.allows(h) for h in ("10.0.0.5:8765", "example.org:8765", "localhost", "[::1]"))
    lan = Served.at("192.168.1.20", 80)
    assert lan.allows("192.168.1.20") and lan.allows("192.168.1.20:80") and not lan.allows("evil.example")
    every = Served.at("0.0.0.0", 8765)  # listening on every address: any IP reaches it, no other name
    assert every.allows("10.1.2.3:8765") and every.allows("[fe80::1]:8765")
    assert not every.allows("evil.example:8765") and not every.allows("10.1.2.3:9999")


# --- hostile query strings ---------------------------------------------------------------------------------

HOSTILE = ["%D9%A3", "%C2%B2", "1e999", "-9223372036854775809", "99999999999999999999999", "nan", "%5B",
           "%27%3B+select+1%3B+--", "%00", "%ff", "%e9" * 3, "%C3%A9" * 300, "..%2F..%2Fetc%2Fpasswd", "true",
           "9" * 12, "%", "%G1", "-1"]  # fmt: skip
FIGURE_RECIPES = sorted(
    {recipe for recipe, _ in pages.FIGURE_PAGES.values()} | {"model_similarity", "stabilisation"}
)


def hostile_queries() -> list[tuple[str, str]]:
    """``(path, query)`` pairs: each key a route reads, and an unknown one, with each hostile value, and
    each key given twice."""
    keys = {"/api/sql": ["q", "page"], "/api/scalars": ["runs", "name"], "/recipe": ["name"],
            "/api/recipe": ["name", "format", "measure"], "/api/runs_table": ["search", "filter", "sort", "desc"],
            "/api/run": ["id"], "/api/run_updates": ["id", "after", "snapshots"], "/api/sweep": ["dir", "outcome"],
            "/api/run_figures": ["id"], "/run": ["id"]}  # fmt: skip
    base = {"/api/sql": "q=select+1", "/api/scalars": "runs=x", "/api/recipe": "name=stabilisation"}
    found = []
    for path in [r.split("?")[0] for r in ROUTES if not r.startswith("/static")]:
        for key in [*keys.get(path, []), "bogus"]:
            for value in HOSTILE:
                rest = "&".join(p for p in base.get(path, "").split("&") if p and not p.startswith(f"{key}="))
                found.append((path, "&".join(p for p in (rest, f"{key}={value}") if p)))
            found.append((path, f"{key}=1&{key}=2"))
    for name in FIGURE_RECIPES:
        for param in load_recipe(name).params:
            found += [("/api/recipe", f"name={name}&{param.name}={value}") for value in HOSTILE]
    return found


CASES = hostile_queries()


def test_every_hostile_query_string_is_answered_with_a_message(app):
    assert len(CASES) > 300
    for path, query in CASES:
        response = app.respond("GET", path, query)
        assert response.status in (200, 400, 404), (path, query, response.status, response.body[:300])
        assert response.body, (path, query)
        if response.status == 400:
            answer = json.loads(response.body)
            assert answer["error"] and answer["fix"], (path, query)


@pytest.mark.parametrize(
    ("query", "message"),
    [("q=select+1&page=%D9%A3", "is not a page number"), ("q=select+1&page=%C2%B2", "is not a page number"),
     ("q=select+1&page=9999999999", "is not a page number"), ("q=select+1&q=select+2", "'q' is given twice"),
     ("q=select+%ff", "not UTF-8"), ("q=select+1&page=-1", "is not a page number")],
)  # fmt: skip
def test_the_console_names_what_is_wrong_with_its_query_string(app, query, message):
    response = app.respond("GET", "/api/sql", query)
    assert response.status == 400 and message in json.loads(response.body)["error"]


@pytest.mark.parametrize(
    ("query", "message"),
    [("name=model_similarity&step=99999999999999999999999", "expected an integer (64-bit)"),
     ("name=model_similarity&step=%D9%A3", "expected an integer"),
     ("name=stabilisation&threshold=1e999", "expected a finite number"),
     ("name=stabilisation&reference_step=%C2%B2", "expected an integer")],
)  # fmt: skip
def test_recipe_numbers_out_of_range_or_in_other_scripts_are_refused(app, query, message):
    response = app.respond("GET", "/api/recipe", query)
    assert response.status == 400 and message in json.loads(response.body)["error"], response.body


def test_over_the_socket_no_query_string_leaves_a_traceback_or_an_empty_reply(server, capfd):
    sample = CASES[:: max(1, len(CASES) // 120)]
    for path, query in sample:
        status, body = request(server, f"{path}?{query}")
        assert status in (200, 400, 404) and body, (path, query, status)
    for raw in ("/api/sql?q=select+1&page=%ZZ", "/api/sql?%ff=1", "/api/recipe?name=stabilisation&%00=1",
                "/api/sql?" + urllib.parse.quote("q=select 1", safe="=")):  # fmt: skip
        status, body = request(server, raw)
        assert status in (200, 400) and body, raw
    assert request(server, "/api/sql?q=select+42+as+answer")[1] == b'{"columns": ["answer"], "rows": [{"answer": 42}], "total": 1, "page": 0, "page_rows": 100, "cut": ""}'  # fmt: skip
    err = capfd.readouterr().err
    assert "Traceback" not in err and "failed" not in err, err[-3000:]


def test_uiapp_checks_the_headers_it_is_given_against_the_address_it_serves(root):
    app = UiApp(root)
    app.serve_at("127.0.0.1", 8765)
    for path in ("/", "/api/overview", "/static/app.js"):
        assert app.respond("GET", path, "", [("Host", "evil.example:8765")]).status == 403
        assert (
            app.respond(
                "GET", path, "", [("Host", "localhost:8765"), ("Origin", "http://evil.example")]
            ).status
            == 403
        )
        assert app.respond("GET", path, "", [("Host", "localhost:8765")]).status == 200
    app.close()
