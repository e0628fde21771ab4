"""Take the README's screenshots of the web UI: each main page of `layerlake ui` on the demo warehouse,
drawn by headless Chromium (``apt-get install chromium chromium-driver``) and saved in ``docs/img/``.

    python docs/screenshots.py [--root DATA/warehouse]

Run `make demo` first for the default root.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from layerlake.ui.app import UiApp
from layerlake.ui.server import make_server

ROOT = Path(__file__).resolve().parents[1]
PAGES = {  # file -> (path, window height: enough for what the page shows first)
    "ui-overview.png": ("/", 1100),
    "ui-convergence.png": ("/convergence?models=embedded-s,embedded-l&sites=attn_out,mlp_out", 1250),
    "ui-heatmap.png": ("/heatmap?models=embedded-m,embedded-l&sites=ov,mlp_out", 1150),
    "ui-matrix.png": ("/matrix?model=embedded-l&layer=3&site=mlp_out", 1000),
    "ui-ranks.png": ("/ranks?models=embedded-l&tensor=weight", 1300),
    "ui-runs.png": ("/compare", 900),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default=str(ROOT / "data" / "warehouse"))
    args = parser.parse_args()
    app = UiApp(Path(args.root))
    server = make_server(app)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = "http://{}:{}".format(*server.server_address[:2])
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        for name, (path, height) in PAGES.items():
            driver.set_window_size(1400, height)
            driver.get(base + path)
            WebDriverWait(driver, 60).until(
                lambda d: (
                    d.find_elements(By.CSS_SELECTOR, "#chart svg, #chart canvas")
                    and "loading" not in d.find_element(By.ID, "status").text
                    and "running" not in d.find_element(By.ID, "status").text
                )
            )
            time.sleep(0.5)  # the last marks settle
            driver.save_screenshot(str(ROOT / "docs" / "img" / name))
            print("wrote", ROOT / "docs" / "img" / name)
    finally:
        driver.quit()
        server.shutdown()


if __name__ == "__main__":
    main()
