"""Shared fixtures: a tiny embedded suite built once per test session through the real code.

``tiny_suite`` -> ``(settings, suites_root)``: two GPT-NeoX models (1 and 2 layers), 32 updates,
8 checkpoints, composed with Hydra exactly as the CLI composes it. ``compose(data_dir, *overrides)``
composes the same tiny config under another data folder (for tests that must not touch the shared one).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

TINY_OVERRIDES = (
    "suite.models=[{name:tiny-a,n_layers:1,d_model:32,n_heads:2,d_mlp:64},"
    "{name:tiny-b,n_layers:2,d_model:64,n_heads:4,d_mlp:128}]",
    "suite.steps=[0,1,2,4,8,16,24,32]",
    "suite.subsets={paper:[0,4,32]}",
    "suite.tokens_per_step=256",
    "suite.train.max_steps=32",
    "suite.train.batch_size=8",
    "suite.train.seq_len=32",
    "suite.train.warmup_steps=4",
    "suite.train.vocab_size=320",
    "suite.train.lr=1e-2",
    "probe.n_sequences=8",
    "probe.seq_len=32",
    "progress=false",
)


def compose_settings(data_dir: str | Path, *overrides: str):
    """The composed ``conf.schema.Config`` of the tiny suite under ``data_dir`` (plus ``overrides``)."""
    from layerlake.conf.compose import compose

    return compose([f"paths.data={data_dir}", *TINY_OVERRIDES, *overrides])


@pytest.fixture(scope="session")
def compose():
    """``compose(data_dir, *overrides) -> Config`` for the tiny suite."""
    return compose_settings


@pytest.fixture(scope="session")
def tiny_overrides() -> tuple[str, ...]:
    """The Hydra overrides that shrink the default config to the tiny suite (for CLI subprocesses)."""
    return TINY_OVERRIDES


@pytest.fixture(scope="session")
def tiny_suite(tmp_path_factory):
    """``(settings, suites_root)``: the tiny suite, built once per session (a few seconds)."""
    from layerlake.etl.suite.command import build

    data = tmp_path_factory.mktemp("tiny-data")
    settings = compose_settings(data)
    assert build(settings) == 0
    return settings, Path(settings.paths.suites)


CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium at 1400 x 1000 for the UI tests (one per test module)."""
    pytest.importorskip("selenium", reason="pip install selenium (the dev extra)")
    if CHROMIUM is None or DRIVER is None:
        pytest.skip("no Chromium or chromedriver: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()
