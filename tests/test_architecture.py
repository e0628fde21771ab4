"""The floor plan holds: one namespace, floors that only import downwards, no import cycles, and a
query side that never loads torch, transformers or ray.

Floors (docs/design.md draws them):

    3  layerlake (the facade: connect), layerlake.cli            the command line and the demo
    2  layerlake.etl          layerlake.queries                  (neither imports the other)
    1  layerlake.warehouse
    0  layerlake.core, layerlake.conf                            the ground floor (conf may use core)
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# Package name -> folder in the repository (pyproject's package-dir says the same).
FOLDERS = {
    "layerlake": REPO / "src" / "layerlake",
    "layerlake.conf": REPO / "conf",
    "layerlake.etl": REPO / "etl",
    "layerlake.warehouse": REPO / "warehouse",
    "layerlake.queries": REPO / "queries",
}
FLOORS = {
    "layerlake.core": 0,
    "layerlake.conf": 0,
    "layerlake.warehouse": 1,
    "layerlake.etl": 2,
    "layerlake.queries": 2,
    "layerlake.cli": 3,
    "layerlake.ui": 3,
    "layerlake": 3,  # the package's own __init__: the facade
}
HEAVY = ("torch", "transformers", "ray", "safetensors", "tokenizers", "huggingface_hub")


def modules() -> dict[str, Path]:
    """Every module of the namespace, by dotted name."""
    found: dict[str, Path] = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            name = ".".join([package, *parts])
            if package == "layerlake" and parts and f"layerlake.{parts[0]}" in FOLDERS:
                continue  # (no such clash today; a folder mapped elsewhere would win)
            found[name] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The namespace modules ``path`` imports, at module level or inside functions."""
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [
                f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                for a in node.names
            ]
        else:
            continue
        targets.update(n for n in names if n == "layerlake" or n.startswith("layerlake."))
    return targets


def floor_of(module: str) -> tuple[str, int]:
    for prefix in sorted(FLOORS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix, FLOORS[prefix]
    raise AssertionError(f"{module} is on no floor")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(path, set(found)) for name, path in found.items()}


def test_no_import_runs_upwards(graph):
    wrong = []
    for module, targets in graph.items():
        home, floor = floor_of(module)
        for target in targets:
            there, level = floor_of(target)
            if level > floor and not (home == "layerlake" and module == "layerlake"):
                wrong.append(f"{module} (floor {floor}) imports {target} (floor {level})")
            if home == "layerlake.core" and there != "layerlake.core":
                wrong.append(f"{module} is on the ground floor's core but imports {target}")
            if {home, there} == {"layerlake.etl", "layerlake.queries"}:
                wrong.append(f"{module} imports {target}: etl and queries stand side by side")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_facade_imports_lazily(graph):
    tree = ast.parse((REPO / "src" / "layerlake" / "__init__.py").read_text())
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert all(not (getattr(n, "module", "") or "").startswith("layerlake") for n in top_level)


def test_no_two_modules_import_each_other(graph):
    """No cycle of any length (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_every_module_lives_in_the_namespace():
    """Nothing in the repository imports the old top-level names."""
    bad = []
    for path in [*REPO.glob("*/**/*.py")]:
        if ".venv" in path.parts or "data" in path.parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            bad += [
                f"{path.relative_to(REPO)}: {n}"
                for n in names
                if n.split(".")[0] in ("conf", "etl", "warehouse", "queries")
            ]
    assert not bad, bad


def test_query_side_loads_no_heavy_module():
    """Every module of the ground floor, the warehouse, the recipes and the command dispatcher, imported
    in a fresh interpreter, then a warehouse written, connected and queried: no torch, transformers, ray."""
    light = [
        m
        for m in modules()
        if floor_of(m)[0] in ("layerlake.core", "layerlake.conf", "layerlake.warehouse", "layerlake.queries")
    ]
    light += ["layerlake", "layerlake.cli.main", "layerlake.cli.commands"]
    script = f"""
import importlib, json, sys, tempfile
import numpy as np
for name in {light!r}:
    importlib.import_module(name)
import layerlake
from layerlake.warehouse.synthetic import checkpoint_tables
from layerlake.warehouse.writer import Warehouse
from layerlake.queries import run_recipe
root = tempfile.mkdtemp()
for step in (0, 1):
    Warehouse(root).commit(f"t{{step}}", "s", "m", checkpoint_tables("m", step, {{(0, "a"): np.eye(4) + step}}, {{(0, "w"): [1.0]}}, d=4), {{}})
con = layerlake.connect(root)
rows = run_recipe(con, "convergence", {{}}).num_rows
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
print(json.dumps({{"rows": rows, "heavy": heavy}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"rows": 2, "heavy": []}


def test_warehouse_import_needs_no_hydra():
    code = (
        "import sys, layerlake.warehouse as w; w.default_root(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('hydra', 'omegaconf')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_sql_file_is_read_by_the_one_grammar():
    """Recipes, staging models, audits and macros: one header format, one loader; each folder's files
    load through the loader that serves them."""
    from layerlake.core.sqlfile import parse_sql_file
    from layerlake.queries.loader import list_recipes
    from layerlake.warehouse.audits import load_audits
    from layerlake.warehouse.macros import STAGING

    files = [p for p in REPO.rglob("*.sql") if ".venv" not in p.parts and "fixtures" not in p.parts]
    assert len(files) >= 35
    for path in files:
        parsed = parse_sql_file(path)
        assert parsed.description and parsed.body.strip(), path
    assert len(list_recipes()) == len(list((REPO / "queries").glob("*.sql")))
    assert len(STAGING.all()) == len(list((REPO / "warehouse" / "sql" / "staging").glob("*.sql")))
    assert len(load_audits()) == len(list((REPO / "warehouse" / "sql" / "audits").glob("*.sql")))


def test_the_readme_layout_table_matches_the_tree():
    import importlib
    import re

    readme = (REPO / "README.md").read_text()
    table = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)/` \| (?:`([\w.]+)`)? ?\|", table, flags=re.MULTILINE)
    folders = {folder for folder, _ in rows}
    for folder, module in rows:
        assert (REPO / folder).is_dir(), f"README lists {folder}/, which is not in the tree"
        if module:
            assert Path(importlib.import_module(module).__file__).parent == (REPO / folder).resolve()
    tops = {
        p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith(".") and any(p.rglob("*.py"))
    }
    tops -= {"data", "build", "dist"} | {p for p in tops if p.endswith(".egg-info")}
    assert tops - {f.split("/")[0] for f in folders} == set(), "a top-level folder is missing from the table"
    for sub in ("core", "cli"):
        assert f"src/layerlake/{sub}" in folders


# What writes into a warehouse: the writer's home and the modules it is built from. Anything else that
# writes files writes outside any warehouse (an export folder, a suite's checkpoints, a query's results).
WRITER_HOME = {"warehouse/writer.py", "warehouse/manifest.py", "warehouse/shards.py", "warehouse/journal.py"}
WRITES_ELSEWHERE = {
    "warehouse/share/export.py": "an export folder (stand-alone, not a warehouse)",
    "warehouse/share/importer.py": "new slices of a shared file into a temporary folder, then stage_copy",
    "etl/suite/corpus.py": "the embedded suite's corpus",
    "etl/suite/manifest.py": "a suite's manifest",
    "etl/suite/train.py": "a suite's checkpoints",
    "src/layerlake/core/render.py": "a query's result file",
}
WRITE_PRIMITIVES = {
    "append_entry", "append_batch", "_append_line", "write_durable", "slices_file", "copy_verified", "fsync_dir",
    "write_table", "ParquetWriter", "add_targets", "roll_back",
}  # fmt: skip
OS_WRITES = {"replace", "rename", "remove", "unlink"}  # as os.<name>


def test_one_home_writes_into_a_warehouse():
    """Extraction, tracking, import-metrics, share import, compact and migrate write through
    ``warehouse.writer.Warehouse`` (docs/design.md, "Writing and failure"): no other module calls a
    low-level write (a manifest line, a shard file, a rename, the maintenance journal), and none
    reaches into the writer's private state."""
    found = []
    for folder in FOLDERS.values():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(REPO).as_posix()
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                if rel not in WRITER_HOME | WRITES_ELSEWHERE.keys() and isinstance(node, ast.Call):
                    func = node.func
                    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                    owner = getattr(getattr(func, "value", None), "id", "")
                    if name in WRITE_PRIMITIVES or (owner == "os" and name in OS_WRITES):
                        found.append(f"{rel}:{node.lineno} calls {name}")
                if rel not in WRITER_HOME and isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                    owner = node.value
                    owner_name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
                    if owner_name in ("store", "warehouse", "writer") and not node.attr.startswith("__"):
                        found.append(f"{rel}:{node.lineno} reads the writer's private {node.attr}")
    assert not found, "\n".join(found)
