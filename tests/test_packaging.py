"""The wheel, installed as a user installs it: one import name, every data file inside, and the query
side working with the core dependencies alone (no torch, transformers or ray).

Builds a (non-editable) wheel, installs it with ``pip`` into a fresh virtual environment without the
``extract`` extra, and runs the query side there, outside the repository (so the source folders are
not on the path).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run(
    cmd: list[str], cwd: Path, env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a clean copy of the tree (no build/ leftovers, no data, no virtualenv)."""
    source = tmp_path_factory.mktemp("source") / "layerlake"
    skip = shutil.ignore_patterns(
        ".git", ".venv", "data", "build", "dist", "*.egg-info", "__pycache__", ".*cache"
    )
    shutil.copytree(REPO, source, ignore=skip)
    out = tmp_path_factory.mktemp("dist")
    done = run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)], out)
    assert done.returncode == 0, done.stderr[-3000:]
    (path,) = out.glob("layerlake-*.whl")
    return path


@pytest.fixture(scope="module")
def core_venv(wheel, tmp_path_factory) -> Path:
    """A virtual environment with the wheel and its core dependencies only."""
    venv = tmp_path_factory.mktemp("core-venv")
    assert run([sys.executable, "-m", "venv", str(venv)], venv).returncode == 0
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt")]
    done = run([*pip, str(wheel)], venv)
    assert done.returncode == 0, done.stderr[-3000:]
    return venv


def test_wheel_holds_one_namespace_and_every_data_file(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"layerlake"}
    data = sorted(
        p.relative_to(REPO).as_posix()
        for folder in ("conf", "warehouse", "queries")
        for p in (REPO / folder).rglob("*")
        if p.suffix in (".sql", ".yaml", ".js", ".css")
    )
    data += [
        p.relative_to(REPO / "src").as_posix().removeprefix("layerlake/")
        for p in (REPO / "src" / "layerlake" / "ui" / "static").iterdir()
    ]
    assert data, "no data files found"
    for rel in data:
        assert f"layerlake/{rel}" in names, f"{rel} is missing from the wheel"
    sources = [p.relative_to(REPO).as_posix().removeprefix("src/") for f in ("src/layerlake", "conf", "etl", "warehouse", "queries")
               for p in (REPO / f).rglob("*.py")]  # fmt: skip
    for rel in sources:
        inside = rel if rel.startswith("layerlake/") else f"layerlake/{rel}"
        assert inside in names, f"{rel} is missing from the wheel"


QUERY_SIDE = r"""
import importlib, json, sys
import numpy as np
for name in ("conf", "etl", "queries", "warehouse"):
    try:
        importlib.import_module(name)
        sys.exit(f"`import {name}` works: the wheel claims a generic top-level name")
    except ImportError:
        pass
import layerlake
from layerlake.queries import list_recipes, run_recipe
from layerlake.warehouse.share import export_dataset
from layerlake.warehouse.synthetic import checkpoint_tables
from layerlake.warehouse.writer import Warehouse

root = sys.argv[1]
warehouse = Warehouse(root)
rng = np.random.default_rng(0)
for step in (0, 4, 16):
    grams = {(layer, site): np.cov(rng.normal(size=(6, 8))) for layer in (0, 1) for site in ("ov", "mlp_out")}
    spectra = {(layer, m): np.sort(rng.random(4))[::-1] for layer in (0, 1) for m in ("ov", "dense_4h_to_h")}
    warehouse.commit(f"t{step}", "s", "m", checkpoint_tables("m", step, grams, spectra, d=8), {"step": step})
con = layerlake.connect(root)
rows = {}
for recipe in list_recipes():
    params = {"model": "m"} if recipe.param("model") and recipe.param("model").required else {}
    rows[recipe.name] = run_recipe(con, recipe.name, params).num_rows
export_dataset(root, sys.argv[2])
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "ray"))
print(json.dumps({"rows": rows, "heavy": heavy}))
"""


def test_query_side_works_with_the_core_dependencies_alone(core_venv, tmp_path):
    python, layerlake = core_venv / "bin" / "python", core_venv / "bin" / "layerlake"
    assert run([str(python), "-c", "import torch"], tmp_path).returncode != 0, "torch is in the core venv"
    root, export, other = tmp_path / "wh", tmp_path / "export", tmp_path / "other"
    done = run([str(python), "-c", QUERY_SIDE, str(root), str(export)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["rows"]["convergence"] > 0 and result["rows"]["rank_trajectories"] > 0
    assert len(result["rows"]) == len(list((REPO / "queries").glob("*.sql")))

    env = {**os.environ, "LAYERLAKE_DATA": str(tmp_path / "data")}
    cli = [str(layerlake)]
    sql = run([*cli, "sql", "--root", str(root), "select count(*) as n from sketches"], tmp_path, env)
    assert sql.returncode == 0 and "12" in sql.stdout, sql.stderr
    check = run([*cli, "check", "--root", str(root)], tmp_path, env)
    assert check.returncode == 0, check.stdout + check.stderr
    imported = run([*cli, "share", "import", str(export), "--root", str(other)], tmp_path, env)
    assert imported.returncode == 0 and "imported" in imported.stdout, imported.stderr
    attached = run(
        [*cli, "share", "attach", str(export), "--sql", "select count(*) from sketches"], tmp_path, env
    )
    assert attached.returncode == 0 and "12" in attached.stdout, attached.stderr


def test_the_installed_package_is_not_shadowed_from_the_checkout_root(core_venv, tmp_path):
    """``python`` started in the checkout root puts the root first on ``sys.path``: no folder there may be
    the package ``layerlake`` (a partial one would hide the installed wheel's subpackages)."""
    python = core_venv / "bin" / "python"
    script = (
        "import sys, layerlake; from layerlake.warehouse.writer import Warehouse; "
        "Warehouse(sys.argv[1]); con = layerlake.connect(sys.argv[1]); "
        "print(con.sql('select count(*) from sketches').fetchall()[0][0], layerlake.__file__)"
    )
    done = run([str(python), "-c", script, str(tmp_path / "wh")], REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    count, location = done.stdout.split()
    assert count == "0"
    assert str(core_venv) in location, f"layerlake was imported from {location}, not the installed wheel"


def test_extraction_without_its_extra_names_the_extra(core_venv, tmp_path):
    done = run([str(core_venv / "bin" / "layerlake"), "extract"], tmp_path)
    assert done.returncode == 2
    assert "pip install 'layerlake[extract]'" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_readmes_python_block_runs_in_a_core_install(core_venv, tmp_path):
    """The README's "From Python" block, as written, with the core dependencies alone (no pandas: it is
    no dependency of the query side, so the block shows ``fetchall`` / ``arrow``, not ``df``)."""
    from readme import block

    python = core_venv / "bin" / "python"
    assert run([str(python), "-c", "import pandas"], tmp_path).returncode != 0, "pandas is in the core venv"
    data = tmp_path / "data"
    made = run([str(python), "-c", QUERY_SIDE, str(data / "warehouse"), str(tmp_path / "export")], tmp_path)
    assert made.returncode == 0, made.stderr[-3000:]
    env = {**os.environ, "LAYERLAKE_DATA": str(data)}
    done = run([str(python), "-c", block("import layerlake\n", "python")], tmp_path, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().startswith("[") and "Traceback" not in done.stderr
