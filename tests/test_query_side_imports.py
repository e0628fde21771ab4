"""The query side never loads torch, transformers or ray (checked in a fresh interpreter)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SCRIPT = """
import json, sys, tempfile
import numpy as np
import warehouse
import warehouse.command, warehouse.writer, warehouse.audits, warehouse.schema_doc
import layerlake
from warehouse.synthetic import checkpoint_tables
from warehouse.writer import Warehouse
root = tempfile.mkdtemp()
Warehouse(root).commit("t", "s", "m", checkpoint_tables("m", 0, {(0, "a"): np.eye(2)}, {(0, "w"): [1.0]}, d=2), {})
con = layerlake.connect(root)
rows = con.sql("select count(*) from sketches").fetchall()
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "ray"))
print(json.dumps({"rows": rows[0][0], "heavy": heavy}))
"""


def test_query_side_loads_no_heavy_modules():
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"rows": 1, "heavy": []}


def test_warehouse_import_stays_light():
    # Hydra is not needed to find the default root: conf.schema (which imports it) stays unloaded.
    code = "import sys, warehouse; warehouse.default_root(); print(sorted(m for m in sys.modules if m.startswith(('hydra', 'omegaconf', 'conf'))))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
