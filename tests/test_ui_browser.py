"""The web UI driven in headless Chromium through Selenium, as a user would: run a recipe from its form,
change a selection, hover a chart, run a query in the console, download a result. Assertions are on what
the browser rendered. Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from test_ui import root, server  # noqa: F401 (the same warehouse and server fixtures)

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")
selenium = pytest.importorskip("selenium", reason="pip install selenium (the dev extra)")
if CHROMIUM is None or DRIVER is None:
    pytest.skip(
        "no Chromium or chromedriver: apt-get install chromium chromium-driver (.ci/run does)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

WAIT_S = 60


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    downloads = tmp_path_factory.mktemp("downloads")
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    driver.downloads = downloads
    yield driver
    driver.quit()


def wait_for(driver, condition, what: str):
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.2).until(condition, message=what)


def status_says(text: str):
    return lambda d: text in d.find_element(By.ID, "status").text


def cells(driver, where: str = "result") -> list[str]:
    """The text of every cell of the table in ``#where``, read in one go (the page may replace it)."""
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map((c) => c.textContent)", f"#{where} td"
    )


def hover_until(browser, marks, words: tuple[str, ...]) -> str | None:
    """Hover each mark in turn until the tooltip shows every one of ``words``; its text, or None."""
    for mark in marks:
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", mark)
        ActionChains(browser).move_to_element(mark).perform()
        time.sleep(0.2)
        shown = browser.find_elements(By.CSS_SELECTOR, "#vg-tooltip-element.visible")
        if shown and all(w in shown[0].text for w in words):
            return shown[0].text
    return None


def chart_text(browser) -> str:
    return browser.execute_script(
        "const svg = document.querySelector('#chart svg'); return svg ? svg.textContent : ''"
    )


def test_a_recipe_runs_from_its_form_and_a_point_shows_its_values_on_hover(browser, server):  # noqa: F811
    browser.get(server + "/matrix")  # the checkpoint x checkpoint page: step_similarity's form
    wait_for(browser, status_says("9 rows"), "the first stored model's matrix")
    Select(browser.find_element(By.NAME, "model")).select_by_visible_text("beta")  # a change draws again
    wait_for(browser, lambda d: "beta" in cells(d) and "alpha" not in cells(d), "beta's matrix")
    Select(browser.find_element(By.NAME, "site")).select_by_visible_text("ov")
    wait_for(browser, lambda d: "ov" in cells(d), "the ov site's matrix")
    wait_for(browser, lambda d: "site ov" in chart_text(d), "the figure's title naming the site")
    assert "CKA between the checkpoints of beta: layer 0, site ov" in chart_text(browser)
    marks = browser.find_elements(By.CSS_SELECTOR, "#chart svg .role-mark [role='graphics-symbol']")
    assert len(marks) >= 9, "the heatmap has a cell per pair of checkpoints"
    tooltip = hover_until(browser, marks[:6], ("CKA", "step (x)", "step (y)"))
    assert tooltip is not None, "hovering the heatmap showed no tooltip"


def test_the_convergence_page_hovers_a_layer(browser, server):  # noqa: F811
    browser.get(server + "/convergence")
    wait_for(browser, status_says("rows"), "Figure 1's bands")
    assert "biased CKA estimator, linear kernel" in chart_text(browser)
    groups = browser.find_elements(By.CSS_SELECTOR, "#chart svg .mark-symbol.role-mark")
    points = groups[-1].find_elements(By.CSS_SELECTOR, "path")  # the last symbol layer: one point per layer
    tooltip = hover_until(browser, points[:12], ("layer", "training step", "CKA"))
    assert tooltip is not None, "hovering a layer's point showed no tooltip"
    Select(browser.find_element(By.NAME, "estimator")).select_by_visible_text("debiased")
    wait_for(browser, lambda d: "debiased CKA estimator" in chart_text(d), "the figure redrawn for debiased")


def test_the_rank_page_plots_the_chosen_measure(browser, server):  # noqa: F811
    browser.get(server + "/ranks")
    wait_for(browser, lambda d: "PER (effective rank / k) of each layer" in chart_text(d), "PER by default")
    Select(browser.find_element(By.NAME, "measure")).select_by_visible_text("stable_rank")
    wait_for(browser, lambda d: "Stable rank of each layer" in chart_text(d), "the stable rank figure")
    assert "stable rank" in chart_text(browser)  # the y axis says it too


def test_changing_a_selection_runs_the_recipe_again(browser, server):  # noqa: F811
    browser.get(server + "/recipe?name=convergence")
    wait_for(browser, status_says("rows"), "the recipe's first result")
    assert "biased" in cells(browser)
    Select(browser.find_element(By.NAME, "estimator")).select_by_visible_text("debiased")
    wait_for(
        browser,
        lambda d: "debiased" in cells(d),
        f"the result with the other estimator ({browser.find_element(By.ID, 'status').text})",
    )
    assert "biased" not in cells(browser)


def test_a_query_runs_in_the_console_and_pages(browser, server):  # noqa: F811
    browser.get(server + "/sql")
    wait_for(browser, status_says("rows"), "the example query")
    box = browser.find_element(By.ID, "q")
    box.clear()
    box.send_keys("select range as i from range(150)")
    browser.find_element(By.CSS_SELECTOR, "#sql-form button").click()
    wait_for(browser, status_says("150 rows; page 1 of 2"), "the query's first page")
    browser.find_element(By.XPATH, "//div[@id='pager']/button[text()='next']").click()
    wait_for(browser, status_says("page 2 of 2"), "the second page")
    assert cells(browser)[0] == "100" and cells(browser)[-1] == "149"
    box = browser.find_element(By.ID, "q")
    box.clear()
    box.send_keys("delete from checkpoints")
    browser.find_element(By.CSS_SELECTOR, "#sql-form button").click()
    wait_for(browser, status_says("read-only: a DELETE statement is refused"), "the refusal")


def test_a_result_downloads_from_its_link(browser, server):  # noqa: F811
    import pyarrow.csv as pacsv

    browser.get(server + "/recipe?name=stabilisation")
    wait_for(browser, status_says("rows"), "the recipe's result")
    browser.find_element(By.LINK_TEXT, "download csv").click()
    target = Path(browser.downloads) / "stabilisation.csv"
    wait_for(browser, lambda d: target.exists() and target.stat().st_size > 0, "the downloaded file")
    rows = pacsv.read_csv(target)
    assert rows.num_rows > 0 and "stabilisation_step" in rows.column_names


def test_a_link_fills_the_form(browser, server):  # noqa: F811
    browser.get(server + "/recipe?name=step_similarity&model=alpha&site=ov")
    wait_for(browser, status_says("9 rows"), "the result of the linked parameters")
    assert "alpha" in cells(browser) and "beta" not in cells(browser)


def test_runs_are_picked_and_their_curves_overlaid(browser, server):  # noqa: F811
    browser.get(server + "/compare")
    wait_for(browser, status_says("2 runs compared; 10 values of loss"), "both runs' loss curves")
    assert browser.find_elements(By.CSS_SELECTOR, "#chart svg")
    browser.find_element(By.CSS_SELECTOR, "#run-list input[value='alpha-seed8']").click()  # untick one
    Select(browser.find_element(By.ID, "scalar")).select_by_visible_text("lr")
    browser.find_element(By.CSS_SELECTOR, "#runs-form button").click()
    wait_for(browser, status_says("1 runs compared; 5 values of lr"), "one run's learning rate")


def test_choosing_a_model_offers_its_own_layers(browser, tmp_path):
    import threading

    import numpy as np

    from layerlake.ui.app import UiApp
    from layerlake.ui.server import make_server
    from layerlake.warehouse.synthetic import checkpoint_tables
    from layerlake.warehouse.writer import Warehouse

    folder = tmp_path / "warehouse"
    rng = np.random.default_rng(0)
    for model, layers in (("m1", 2), ("m2", 4)):
        for step in (0, 10):
            grams = {(layer, "mlp_out"): np.cov(rng.normal(size=(6, 8))) for layer in range(layers)}
            Warehouse(folder).commit(
                f"{model}-{step}", "s", model, checkpoint_tables(model, step, grams, {}, d=8), {"step": step}
            )
    httpd = make_server(UiApp(folder))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        browser.get("http://{}:{}/matrix".format(*httpd.server_address[:2]))
        wait_for(browser, status_says("4 rows"), "m1's matrix")

        def layers(d) -> list[str]:
            return [o.text for o in Select(d.find_element(By.NAME, "layer")).options]

        assert layers(browser) == ["0", "1"]
        Select(browser.find_element(By.NAME, "model")).select_by_visible_text("m2")
        wait_for(browser, lambda d: layers(d) == ["0", "1", "2", "3"] and "m2" in cells(d), "m2's layers")
        Select(browser.find_element(By.NAME, "layer")).select_by_visible_text("3")
        wait_for(browser, lambda d: "layer 3" in chart_text(d), "layer 3 of m2")
        Select(browser.find_element(By.NAME, "model")).select_by_visible_text("m1")
        wait_for(browser, lambda d: layers(d) == ["0", "1"] and "m1" in cells(d), "m1's layers again")
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_narrow_window_pages_the_panels(browser, server):  # noqa: F811
    browser.set_window_size(760, 760)
    try:
        browser.get(server + "/convergence")
        wait_for(browser, lambda d: "panels 1-2 of 4" in d.find_element(By.ID, "panel-pager").text, "page 1")
        assert "alpha" in chart_text(browser) and "beta" not in chart_text(browser)
        browser.find_element(By.XPATH, "//div[@id='panel-pager']/button[text()='next panels']").click()
        wait_for(browser, lambda d: "beta" in chart_text(d) and "alpha" not in chart_text(d), "beta's panels")
        width = browser.execute_script(
            "return document.querySelector('#chart svg').getBoundingClientRect().width"
        )
        assert width <= 760, "the figure fits the window's width"
    finally:
        browser.set_window_size(1400, 1000)


@pytest.fixture(scope="module")
def four_models(tmp_path_factory):
    """Four models' spectra of four matrices: the rank page draws a row of panels per model, a column
    per matrix: four across a wide window."""
    import threading

    import numpy as np

    from layerlake.ui.app import UiApp
    from layerlake.ui.server import make_server
    from layerlake.warehouse.synthetic import checkpoint_tables
    from layerlake.warehouse.writer import Warehouse

    folder = tmp_path_factory.mktemp("four") / "warehouse"
    rng = np.random.default_rng(0)
    for model in ("model-one", "model-two", "model-three", "model-four"):
        for step in (0, 10, 100, 1000):
            spectra = {
                (layer, matrix): np.sort(rng.random(6))[::-1]
                for layer in range(3)
                for matrix in ("dense_4h_to_h", "dense_h_to_4h", "query_key_value", "dense")
            }
            Warehouse(folder).commit(
                f"{model}-{step}",
                "s",
                model,
                checkpoint_tables(model, step, {}, spectra, d=8),
                {"step": step},
            )
    httpd = make_server(UiApp(folder))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield "http://{}:{}".format(*httpd.server_address[:2])
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("size", [(1400, 1000), (1000, 800)])
def test_a_figure_with_its_axes_and_legends_fits_its_box(browser, four_models, size):
    browser.set_window_size(*size)
    try:
        browser.get(four_models + "/ranks")
        wait_for(browser, status_says("rows"), "the rank figure")
        time.sleep(1)  # a figure drawn too wide is asked for again with fewer panels across
        wait_for(browser, status_says("rows"), "the rank figure, drawn again")
        figure, box = browser.execute_script(
            "const box = document.querySelector('main'); const f = box.querySelector('#chart svg, #chart canvas');"
            "return [f.getBoundingClientRect().right, box.getBoundingClientRect().right]"
        )
        assert figure <= box, f"the figure ends at {figure} px, its box at {box} px"
        assert "dense_h_to_4h" in chart_text(browser)
    finally:
        browser.set_window_size(1400, 1000)
