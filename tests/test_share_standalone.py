"""An export reads without layerlake: plain duckdb and pyarrow in a subprocess that cannot import it,
the dataset card's example query as written, and the Hugging Face ``datasets`` configs of the card."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_share import build_warehouse  # tests/ is on sys.path under pytest

from layerlake.warehouse import schema
from layerlake.warehouse.share import export_dataset

# Runs in a fresh interpreter: any import of a layerlake package fails, then every table is read by
# every reader a collaborator might use, each asked for the same canonical rows.
READER = r"""
import importlib.abc, json, sys
BLOCKED = {"etl", "warehouse", "queries", "layerlake", "conf"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} must not be needed to read an export")
sys.meta_path.insert(0, Block())
import duckdb, pandas as pd, polars as pl, pyarrow.dataset as ds
folder, tables, example = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})


def canonical(columns, rows):
    keep = [i for i, c in enumerate(columns) if c not in ("gram", "sv", "overrides")]  # lists: compared by count
    return {"columns": list(columns), "rows": sorted(json.dumps([r[i] for i in keep], default=str) for r in rows)}


out = {}
for t in tables:
    glob = f"{folder}/{t}/**/*.parquet"
    rel = con.sql(f"select * from read_parquet('{glob}')")
    frame = pd.read_parquet(f"{folder}/{t}")
    polars = pl.read_parquet(glob)
    arrow = ds.dataset(f"{folder}/{t}", format="parquet").to_table()
    out[t] = {
        "duckdb": canonical(rel.columns, rel.fetchall()),
        "pandas": canonical(list(frame.columns), frame.astype(object).where(frame.notna(), None).values.tolist()),
        "polars": canonical(polars.columns, polars.rows()),
        "pyarrow": canonical(arrow.column_names, [tuple(r.values()) for r in arrow.to_pylist()]),
    }
import os
os.chdir(folder)
out["example"] = [list(r) for r in con.sql(example).fetchall()]
out["leaked"] = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("standalone")
    build_warehouse(base / "wh")
    export_dataset(base / "wh", base / "shared")
    return base / "shared"


def example_query(folder: Path) -> str:
    return re.search(r"```sql\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)


def independent_cka(folder: Path) -> dict[tuple, float]:
    """(model, site, layer, step) -> cosine of the stored Gram with the last step's, in numpy."""
    grams = {}
    for path in folder.glob("sketches/*/*/*.parquet"):
        model = path.parent.name
        for row in pq.read_table(path).to_pylist():
            gram = np.frombuffer(row["gram"], dtype="<f4").astype(np.float64)  # as the files hold it
            grams[(model, row["site"], row["layer"], row["step"])] = gram
    last = {k[:3]: max(s for (*kk, s) in grams if tuple(kk) == k[:3]) for k in grams}
    out = {}
    for key, g in grams.items():
        final = grams[(*key[:3], last[key[:3]])]
        out[key] = float(g @ final / np.linalg.norm(g) / np.linalg.norm(final))
    return out


def test_every_reader_returns_the_same_columns_and_rows_and_the_example_runs(exported):
    """DuckDB, pandas, polars and pyarrow.dataset see exactly the files' columns (suite, model and run_id
    included: nothing is inferred from folder names) and the same rows, table by table."""
    manifest = json.loads((exported / "manifest.json").read_text())
    tables = list(manifest["tables"])
    args = [sys.executable, "-I", "-c", READER, str(exported), json.dumps(tables), example_query(exported)]
    result = subprocess.run(args, capture_output=True, text=True, cwd="/", timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["leaked"] == []
    for t in tables:
        readers = out[t]
        columns = [c.name for c in schema.table(t).all_columns]
        for name, got in readers.items():
            assert got["columns"] == columns, (t, name)
            assert got == readers["duckdb"], (t, name)
        assert len(readers["duckdb"]["rows"]) == manifest["tables"][t]["rows"]
    expected = independent_cka(exported)
    got = {(m, site, layer, step): cka for m, _run, site, layer, step, cka in out["example"]}
    assert set(got) == set(expected) and len(got) == 2 * 2 * 2 * 3
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-5)
    assert all(got[k] == pytest.approx(1.0) for k in got if k[3] == 20)


def test_datasets_library_loads_each_table_from_the_card(exported, tmp_path):
    code = (
        "import json, sys, datasets\n"
        "folder, tables = sys.argv[1], json.loads(sys.argv[2])\n"
        "out = {}\n"
        "for t in tables:\n"
        "    d = datasets.load_dataset(folder, t, split='train')\n"
        "    out[t] = {'rows': d.num_rows, 'columns': d.column_names, 'keys': sorted({(r['suite'], r['model'], r['run_id']) for r in d})}\n"
        "print(json.dumps(out))\n"
    )
    manifest = json.loads((exported / "manifest.json").read_text())
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    args = [sys.executable, "-c", code, str(exported), json.dumps(list(manifest["tables"]))]
    try:
        result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.skip("datasets took too long to start on this machine")
    if "No module named 'datasets'" in result.stderr:
        pytest.skip("the Hugging Face datasets library is not installed")
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    for t, info in manifest["tables"].items():  # every column, suite and model included, on every table
        assert got[t]["rows"] == info["rows"]
        assert got[t]["columns"] == [c.name for c in schema.table(t).all_columns]
        want = {
            (f["suite"], f["model"], f"{f['suite']}.{f['model']}")
            for f in manifest["files"]
            if f["table"] == t
        }
        assert got[t]["keys"] == [list(k) for k in sorted(want)]
