"""``layerlake extract executor=ray`` (what ``make demo`` runs, and the README's line, which tests/test_readme.py runs on
the local executor) starts a local Ray cluster without Ray's token-authentication notice: the executor
chooses the mode Ray would pick, explicitly."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERLAKE = str(REPO / ".venv" / "bin" / "layerlake")


@pytest.mark.ray
@pytest.mark.slow  # a whole Ray extraction in a subprocess: make test-slow
def test_a_local_ray_extraction_prints_no_token_authentication_warning(tiny_suite, tiny_overrides, tmp_path):
    _, suites = tiny_suite
    shutil.copytree(suites, tmp_path / "suites")
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}  # as a user's shell would have it
    args = [LAYERLAKE, "extract", "executor=ray", f"paths.data={tmp_path}", *tiny_overrides]
    run = subprocess.run(
        [*args, "steps.only=[0]", "models=[tiny-a]", "progress=true"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ok tiny-a step0" in run.stderr  # the run really went through Ray and reported its task
    assert "Token authentication" not in run.stdout + run.stderr
    assert "RAY_AUTH_MODE" not in run.stdout + run.stderr


def test_a_mode_the_user_chose_is_kept(monkeypatch):
    from layerlake.etl.executors import local_cluster_auth

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    local_cluster_auth()
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
