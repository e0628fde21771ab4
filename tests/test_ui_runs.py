"""The UI's runs pages over a real warehouse: a Hydra multirun of tiny GPT-NeoX models trained with
layerlake.track (config, overrides, sweep folder, logged loss, snapshots), tagged and noted from the CLI.

First the JSON endpoints (what the pages show, and that a request's values are checked), then the pages
in headless Chromium, one browser for all: filter the runs table and open a run, watch a live run's new
snapshot appear while this test commits it, draw the sweep view. With ``LAYERLAKE_SCREENSHOTS=docs/img``
the browser tests save their screenshots there (``docs/img/ui-runs-table.png``, ``ui-run-page.png``, ``ui-run-live.png``, ``ui-sweep.png``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest
from test_ui import get

import layerlake
from layerlake.cli.main import main
from layerlake.core.duck import QueryLimits
from layerlake.ui.app import UiApp
from layerlake.ui.server import make_server

HERE = Path(__file__).resolve().parent
PROBE = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17, 18], [19, 20, 21, 22, 23, 24]]

TRAIN = """
import sys, hydra, torch, layerlake
sys.path.insert(0, {here!r})
import tiny_models
PROBE = {probe!r}

@hydra.main(version_base=None, config_path="conf", config_name="config")
def main(cfg):
    torch.manual_seed(cfg.seed)
    model = tiny_models.neox(seed=cfg.seed).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr)
    g = torch.Generator().manual_seed(cfg.seed)
    with layerlake.track(model, suite="sweep", model_name="neox", warehouse={warehouse!r}, probe=PROBE,
                         seed=cfg.seed, cadence=[0, 3, 5], quiet=True) as run:
        for step in range(6):
            batch = torch.randint(0, 40, (4, 12), generator=g)
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            run.log(step, loss=loss.item(), lr=cfg.optim.lr)
            run.snapshot(step, model)
main()
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """Four jobs of one Hydra multirun (lr 0.01 and 0.5, seeds 0 and 1), one run tagged and noted."""
    folder = tmp_path_factory.mktemp("ui_runs")
    warehouse = folder / "wh"
    (folder / "conf").mkdir()
    (folder / "conf" / "config.yaml").write_text("optim:\n  lr: 0.01\n  momentum: 0.0\nseed: 0\nbatch: 4\n")
    script = folder / "train.py"
    script.write_text(TRAIN.format(here=str(HERE), probe=PROBE, warehouse=str(warehouse)))
    done = subprocess.run(
        [sys.executable, str(script), "-m", "optim.lr=0.01,0.5", "seed=0,1", f"hydra.sweep.dir={folder / 'multirun'}"],
        cwd=folder, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    first = run_ids(warehouse)[0]
    assert main(["runs", "tag", first, "verdict=baseline", "--root", str(warehouse)]) == 0
    assert main(["runs", "note", first, "the first job of the sweep", "--root", str(warehouse)]) == 0
    return warehouse


def run_ids(root: Path) -> list[str]:
    con = layerlake.connect(root)
    try:
        return [r for (r,) in con.execute("select run_id from runs order by job_num").fetchall()]
    finally:
        con.close()


@pytest.fixture(scope="module")
def server(root):
    app = UiApp(root, limits=QueryLimits(timeout_s=30.0, memory_limit="1GB"))
    httpd = make_server(app)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    host, port = httpd.server_address[:2]
    yield f"http://{host}:{port}"
    httpd.shutdown()
    httpd.server_close()
    app.close()


def api(server: str, path: str, **params) -> tuple[int, dict]:
    status, _, body = get(f"{server}{path}?{urllib.parse.urlencode(params)}")
    return status, json.loads(body)


# --- the endpoints ----------------------------------------------------------------------------------------


def test_the_runs_table_has_the_differing_config_last_values_and_tags(server, root):
    status, data = api(server, "/api/runs_table")
    assert status == 200 and data["total"] == 4 and len(data["rows"]) == 4
    columns = data["columns"]
    assert {"config.optim.lr", "config.seed", "last.loss", "last.lr", "tag.verdict"} <= set(columns)
    assert "config.batch" not in columns and data["shared"]["batch"] == 4  # the same in every run
    rows = {r["run_id"]: r for r in data["rows"]}
    first = run_ids(root)[0]
    assert rows[first]["tag.verdict"] == "baseline" and rows[first]["notes"] == 1
    assert all(r["snapshots"] == 3 and r["status"] == "finished" for r in rows.values())
    assert sorted(r["config.optim.lr"] for r in rows.values()) == [0.01, 0.01, 0.5, 0.5]


def test_the_runs_table_filters_searches_and_sorts(server, root):
    _, data = api(server, "/api/runs_table", filter="lr > 0.1")
    assert len(data["rows"]) == 2 and all(r["config.optim.lr"] == 0.5 for r in data["rows"])
    _, data = api(server, "/api/runs_table", filter="lr > 0.1, seed = 1")
    assert [r["config.seed"] for r in data["rows"]] == [1]
    _, data = api(server, "/api/runs_table", search="BASELINE")
    assert [r["run_id"] for r in data["rows"]] == [run_ids(root)[0]]
    _, data = api(server, "/api/runs_table", sort="job_num", desc="1")
    assert [r["job_num"] for r in data["rows"]] == [3, 2, 1, 0]
    _, data = api(server, "/api/runs_table", sort="last.loss")
    losses = [r["last.loss"] for r in data["rows"]]
    assert losses == sorted(losses)


def test_a_bad_filter_is_a_clear_error(server):
    status, data = api(server, "/api/runs_table", filter="lrr > 1")
    assert status == 400 and "no column 'lrr'" in data["error"]
    status, data = api(server, "/api/runs_table", filter="lr; drop table runs")
    assert status == 400 and "column op value" in data["error"]
    status, data = api(server, "/api/runs_table", sort="nothing")
    assert status == 400
    status, data = api(server, "/api/runs_table", bogus="1")
    assert status == 400 and "unknown field" in data["error"]


def test_the_run_endpoint_has_provenance_values_and_snapshots(server, root):
    run_id = run_ids(root)[1]
    status, data = api(server, "/api/run", id=run_id)
    assert status == 200
    run = data["run"]
    assert run["status"] == "finished" and run["job_num"] == 1 and run["sweep_dir"].endswith("multirun")
    assert run["overrides"] == ["optim.lr=0.01", "seed=1"] and run["host"]
    assert data["config"]["optim.lr"] == 0.01 and data["config"]["seed"] == 1
    assert [s["step"] for s in data["snapshots"]] == [0, 3, 5]
    assert all(s["checkpoints"] == 1 and s["sketches"] > 0 for s in data["snapshots"])
    assert {r["name"] for r in data["logged"]} == {"loss", "lr"} and data["last_step"] == 5
    status, figures = api(server, "/api/run_figures", id=run_id)
    assert status == 200 and figures["cka"] and figures["ranks"]
    steps = {v["step"] for v in figures["cka"]["data"]["values"]}
    assert steps == {0, 3, 5}
    # updates after the last step: nothing new
    _, updates = api(server, "/api/run_updates", id=run_id, after=5, snapshots=3)
    assert updates["logged"] == [] and updates["snapshots"] is None and updates["status"] == "finished"
    _, updates = api(server, "/api/run_updates", id=run_id, after=3, snapshots=0)
    assert {r["step"] for r in updates["logged"]} == {4, 5} and len(updates["snapshots"]) == 3


def test_a_run_a_request_names_is_looked_up_never_used(server):
    for bad in ("../../etc/passwd", "x' or '1'='1", ""):
        status, data = api(server, "/api/run", id=bad)
        assert status == 400 and "is not in the warehouse" in data["error"]
        status, _, _ = get(f"{server}/run?{urllib.parse.urlencode({'id': bad})}")
        assert status == 404
    status, data = api(server, "/api/run_updates", id="nope", after="x")
    assert status == 400
    status, data = api(server, "/api/sweep", dir="/etc")
    assert status == 400 and "no run belongs to sweep" in data["error"]
    status, data = api(server, "/api/sweep", outcome="loss; select 1")
    assert status == 400 and "unknown outcome" in data["error"]


@pytest.mark.parametrize("outcome", ["final_loss", "stabilised_share", "median_stabilisation_step"])
def test_the_sweep_endpoint_plots_each_swept_value_against_an_outcome(server, root, outcome):
    status, data = api(server, "/api/sweep", outcome=outcome)
    assert status == 200, data
    assert data["keys"] == ["optim.lr", "seed"] and len(data["rows"]) == 4
    assert [r["job_num"] for r in data["rows"]] == [0, 1, 2, 3]
    values = [r[outcome] for r in data["rows"]]
    assert all(v is not None for v in values), values
    if outcome == "final_loss":
        _, table = api(server, "/api/runs_table")
        assert sorted(values) == sorted(r["last.loss"] for r in table["rows"])
    if outcome == "stabilised_share":
        assert all(0 <= v <= 1 for v in values)
    chart = data["chart"]
    assert len(chart["hconcat"]) == 2 and chart["hconcat"][0]["encoding"]["x"]["title"] == "optim.lr"


def test_the_version_changes_when_a_run_commits(server, root, tmp_path):
    _, before = api(server, "/api/version")
    _, again = api(server, "/api/version")
    assert before == again
    assert main(["runs", "note", run_ids(root)[2], "looked at it", "--root", str(root)]) == 0
    _, after = api(server, "/api/version")
    assert after != before
    _, data = api(server, "/api/runs_table", filter="notes > 0")
    assert len(data["rows"]) == 2  # the new note shows without a restart


def test_the_pages_only_answer_get(server):
    for path in ("/runs", "/api/runs_table", "/api/sweep"):
        status, _, _ = get(server + path, method="POST")
        assert status == 405


# --- in a browser -----------------------------------------------------------------------------------------


def wait_for(driver, condition, what: str):
    """Wait until ``condition`` holds; an element the page re-drew between finding and reading it (a
    table redrawn after a sort) is looked for again, not an error."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(driver, 60, poll_frequency=0.2, ignored_exceptions=ignored).until(
        condition, message=what
    )


def status_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, "status").text


def screenshot(driver, name: str) -> None:
    """Saved when LAYERLAKE_SCREENSHOTS names a folder (docs/img, to refresh the docs' pictures)."""
    folder = os.environ.get("LAYERLAKE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        width, height = driver.execute_script(
            "const e = document.documentElement; return [e.scrollWidth, e.scrollHeight]"
        )
        driver.set_window_size(
            min(max(width, 1400) + 20, 2000), min(max(height, 600) + 20, 3000)
        )  # the whole page
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))
        driver.set_window_size(1400, 1000)


def test_the_runs_table_filters_and_opens_a_run(browser, server, root):
    from selenium.webdriver.common.by import By

    browser.get(server + "/runs")
    wait_for(browser, lambda d: "4 of 4 runs" in status_text(d), "the runs table")
    field = browser.find_element(By.ID, "filter")
    field.send_keys("lr < 0.1")
    wait_for(browser, lambda d: "2 of 4 runs" in status_text(d), "the filtered table")
    shown = browser.execute_script(
        "return [...document.querySelectorAll('#runs tbody tr')].map((r) => r.dataset.run)"
    )
    assert len(shown) == 2 and "filter=lr" in browser.current_url
    header = browser.find_element(By.CSS_SELECTOR, "th[data-column='last.loss']")
    header.click()
    wait_for(
        browser,
        lambda d: "▲" in d.find_element(By.CSS_SELECTOR, "th[data-column='last.loss']").text,
        "sorted",
    )
    screenshot(browser, "ui-runs-table")
    browser.find_element(By.CSS_SELECTOR, f"#runs a[href='/run?id={shown[0]}']").click()
    wait_for(browser, lambda d: "snapshots" in status_text(d), "the run page")
    assert browser.find_element(By.TAG_NAME, "h1").text == shown[0]
    facts = browser.find_element(By.ID, "facts").text
    assert "finished" in facts and "job " in facts and "host" in facts and "multirun" in facts
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#cka svg, #cka canvas"), "the CKA figure")
    wait_for(
        browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#ranks svg, #ranks canvas"), "the rank figure"
    )
    assert browser.find_elements(By.CSS_SELECTOR, "#logged svg")
    assert [c.text for c in browser.find_elements(By.CSS_SELECTOR, "#snapshots td:first-child")] == [
        "0",
        "3",
        "5",
    ]
    screenshot(browser, "ui-run-page")


def test_a_live_run_page_shows_a_new_snapshot_as_it_is_committed(browser, server, root):
    from selenium.webdriver.common.by import By

    sys.path.insert(0, str(HERE))
    import tiny_models

    model = tiny_models.neox(seed=3)
    with layerlake.track(
        model, suite="sweep", model_name="neox", run_id="live", warehouse=root, probe=PROBE, cadence=1,
        quiet=True, config={"optim": {"lr": 0.1}, "seed": 3},
    ) as run:  # fmt: skip
        run.log(0, loss=3.0)
        run.snapshot(0, model)
        run.wait()
        browser.get(server + "/run?id=live")
        wait_for(browser, lambda d: "1 snapshots" in status_text(d), "the live run's first snapshot")
        assert "running" in browser.find_element(By.ID, "badge").text
        marker = browser.execute_script("window.notReloaded = true; return window.notReloaded")
        run.log(1, loss=2.5)
        run.snapshot(1, model)
        run.wait()  # committed: the page must show it without a reload
        wait_for(browser, lambda d: "2 snapshots" in status_text(d), "the new snapshot on the open page")
        assert browser.execute_script("return window.notReloaded") is marker is True
        assert "2 logged values" in status_text(browser)
        screenshot(browser, "ui-run-live")
    wait_for(browser, lambda d: "finished" in d.find_element(By.ID, "badge").text, "the run marked finished")


def test_the_sweep_view_draws_each_swept_value_against_the_outcome(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(server + "/sweep")
    wait_for(browser, lambda d: "4 runs, 2 swept values" in status_text(d), "the sweep view")
    text = browser.execute_script(
        "const s = document.querySelector('#chart svg'); return s ? s.textContent : ''"
    )
    assert "optim.lr" in text and "seed" in text and "final loss" in text.lower()
    Select(browser.find_element(By.ID, "outcome")).select_by_value("stabilised_share")
    wait_for(browser, lambda d: "outcome=stabilised_share" in d.current_url, "the other outcome")
    wait_for(browser, lambda d: "4 runs" in status_text(d), "drawn again")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#result tbody tr")) == 4
    screenshot(browser, "ui-sweep")


def test_ticked_runs_open_in_the_compare_page(browser, server):
    from selenium.webdriver.common.by import By

    browser.get(server + "/runs?filter=seed%20%3D%201")
    wait_for(browser, lambda d: "2 of " in status_text(d), "the table filtered from the address")
    for box in browser.find_elements(By.CSS_SELECTOR, "#runs tbody input[type=checkbox]"):
        box.click()
    browser.find_element(By.ID, "compare").click()
    wait_for(
        browser, lambda d: "2 runs compared; 12 values of loss" in status_text(d), "the two runs overlaid"
    )
    assert "/compare?runs=" in browser.current_url
