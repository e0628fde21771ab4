"""Sharing: export a stand-alone folder, import it (all or nothing, idempotent), attach it in place.

Real Parquet, real DuckDB, real manifest; rows written through ``Warehouse.commit``. The fault matrix
lives in ``test_share_faults.py``, the reads without layerlake in ``test_share_standalone.py``; both
reuse the builders below.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from layerlake import warehouse
from layerlake.cli.main import main
from layerlake.core.hashing import sha256_file
from layerlake.warehouse import schema
from layerlake.warehouse.errors import ShareError
from layerlake.warehouse.manifest import manifest_path, read_entries
from layerlake.warehouse.share import attach, export_dataset, import_dataset, verify_folder
from layerlake.warehouse.synthetic import centred_gram, checkpoint_tables
from layerlake.warehouse.writer import Warehouse

SUITE = "toy"
MODELS = ("m1", "m2")
STEPS = (0, 10, 20)
N, D = 6, 5


def activation_stats(step: int, sha: str, rng: np.random.Generator) -> pa.Table:
    rows = [
        {"step": step, "weights_sha256": sha, "layer": layer, "site": site, "head": None, "probe_id": "probe0",
         "n": N, "d": D, "mean_norm": float(rng.random()), "rms": float(rng.random()), "std": float(rng.random()),
         "max_abs": float(rng.random()), "kurtosis": float(rng.normal()), "frac_near_zero": 0.0,
         "sv": sorted(rng.random(D).tolist(), reverse=True), "eps": 2.0**-23}
        for layer in (0, 1) for site in ("attn_out", "mlp_out")
    ]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=schema.ACTIVATION_STATS.arrow_schema())


def checkpoint(model: str, step: int, seed: int = 0) -> dict[str, pa.Table]:
    """One checkpoint's tables; ``seed`` changes the values but not the keys."""
    rng = np.random.default_rng([seed, step, MODELS.index(model) if model in MODELS else 9])
    grams = {
        (layer, site): centred_gram(rng.normal(size=(N, D)))
        for layer in (0, 1)
        for site in ("attn_out", "mlp_out")
    }
    spectra = {(layer, "dense"): sorted(rng.random(3).tolist(), reverse=True) for layer in (0, 1)}
    tables = checkpoint_tables(model, step, grams, spectra, d=D)
    sha = tables["checkpoints"].column("weights_sha256")[0].as_py()
    return tables | {"activation_stats": activation_stats(step, sha, rng)}


def probes() -> pa.Table:
    row = {
        "probe_id": "probe0",
        "source": "embedded",
        "n_sequences": 3,
        "seq_len": 4,
        "positions": "last",
        "n": N,
        "seed": None,
    }
    return pa.Table.from_pylist([row], schema=schema.PROBES.arrow_schema())


def task_meta(model: str, step: int) -> dict:
    return {"kind": "extract", "revision": f"step{step}", "step": step, "tokens_seen": step * 100, "source": "local",
            "location": f"/ckpt/{model}/step{step}", "probe_id": "probe0", "config_hash": "cfg123",
            "code_version": "0.1.0+test", "weights_sha256": hashlib.sha256(f"{model}@{step}".encode()).hexdigest()}  # fmt: skip


def build_warehouse(root: Path, models=MODELS, steps=STEPS, seed: int = 0) -> Warehouse:
    """A warehouse with a probes task per model and one extract task per (model, step)."""
    w = Warehouse(root)
    for model in models:
        w.commit(
            f"probe-{model}", SUITE, model, {"probes": probes()}, {"kind": "probe", "probe_id": "probe0"}
        )
        for step in steps:
            w.commit(f"t-{model}-{step}", SUITE, model, checkpoint(model, step, seed), task_meta(model, step))
    return w


def tree_hash(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (what 'byte for byte unchanged' means in these tests)."""
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def view_rows(root: Path, attach_: tuple = ()) -> dict[str, list]:
    """Every contract view's rows, in a canonical order."""
    con = warehouse.connect(root, attach=attach_)
    try:
        return {t: con.sql(f"select * from {t} order by all").fetchall() for t in schema.TABLES}
    finally:
        con.close()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("source") / "warehouse"
    build_warehouse(root)
    return root


@pytest.fixture(scope="module")
def exported(source, tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("exports") / "full"
    export_dataset(source, dest)
    return dest


def test_export_copies_committed_shards_byte_for_byte_with_manifest(source, exported):
    manifest = json.loads((exported / "manifest.json").read_text())
    committed = {f.path: f for e in Warehouse(source).committed().values() for f in e.files}
    assert {f["path"] for f in manifest["files"]} == set(committed)
    for f in manifest["files"]:
        assert sha256_file(exported / f["path"]) == sha256_file(source / f["path"]) == f["sha256"]
        assert (f["rows"], f["bytes"]) == (committed[f["path"]].rows, committed[f["path"]].bytes)
        assert pq.ParquetFile(exported / f["path"]).metadata.num_rows == f["rows"]
    assert manifest["schema_version"] == schema.SCHEMA_VERSION
    # provenance of every checkpoint: one per (model, step), with what produced it
    got = {(c["model"], c["step"]): c for c in manifest["checkpoints"]}
    assert set(got) == {(m, s) for m in MODELS for s in STEPS}
    assert got[("m2", 10)]["weights_sha256"] == task_meta("m2", 10)["weights_sha256"]
    assert {c["code_version"] for c in got.values()} == {"0.1.0+test"}
    assert {c["config_hash"] for c in got.values()} == {"cfg123"}
    assert {k for c in got.values() for k in c} >= {"source", "revision", "probe_id", "location", "task_id"}
    assert sorted(p.name for p in exported.parent.iterdir()) == ["full"]  # no staging sibling left


def test_dataset_card_header_declares_one_config_per_table(exported):
    text = (exported / "README.md").read_text()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    configs = {c["config_name"]: c["data_files"] for c in header["configs"]}
    # one config per table the export holds files of (a config whose glob matches nothing fails to load)
    held = [t for t in schema.TABLES if any((exported / t).rglob("*.parquet"))]
    assert configs == {t: f"{t}/**/*.parquet" for t in held}
    assert "sketches" in held and "runs" not in held  # this export holds some tables, not all
    body = text.split("---\n", 2)[2]
    for needle in ("m1", "m2", "0, 10, 20", "attn_out", "mlp_out", "biased", "read_parquet(", "```sql"):
        assert needle in body, needle
    for column in schema.SKETCHES.columns:  # the column docs come from the contract
        assert f"| {column.name} |" in body


def test_croissant_describes_every_table_and_column(exported):
    meta = json.loads((exported / "croissant.json").read_text())
    assert meta["conformsTo"] == "http://mlcommons.org/croissant/1.0"
    sets = {r["name"]: [f["name"] for f in r["field"]] for r in meta["recordSet"]}
    manifest = json.loads((exported / "manifest.json").read_text())
    assert set(sets) == set(manifest["tables"])
    for name, fields in sets.items():
        assert fields == [c.name for c in schema.table(name).all_columns]
    assert {d["includes"] for d in meta["distribution"]} == {f"{t}/**/*.parquet" for t in sets}


def test_export_filters(source, tmp_path):
    report = export_dataset(
        source, tmp_path / "one", models=["m2"], steps=[10], tables=["sketches", "checkpoints"]
    )
    manifest = json.loads((tmp_path / "one" / "manifest.json").read_text())
    assert {(f["model"], f["table"]) for f in manifest["files"]} == {
        ("m2", "sketches"),
        ("m2", "checkpoints"),
    }
    assert [c["step"] for c in manifest["checkpoints"]] == [10]
    assert report.rows == 4 + 1  # 2 layers x 2 sites, one checkpoint row
    with pytest.raises(ShareError, match="unknown table"):
        export_dataset(source, tmp_path / "bad", tables=["nope"])
    with pytest.raises(ShareError, match="--models m9: not stored"):
        export_dataset(source, tmp_path / "bad", models=["m9"])
    assert not (tmp_path / "bad").exists()


def test_export_refuses_a_non_empty_folder(source, tmp_path):
    dest = tmp_path / "taken"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")
    with pytest.raises(ShareError, match="not empty"):
        export_dataset(source, dest)
    assert [p.name for p in dest.iterdir()] == ["mine.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    (tmp_path / "empty").mkdir()
    export_dataset(source, tmp_path / "empty")  # an empty folder is fine
    verify_folder(tmp_path / "empty")


@pytest.mark.parametrize("steps", [[-5], [10, 11]])
def test_an_export_of_steps_not_stored_is_refused_naming_them(source, tmp_path, steps):
    # tasks without a step (the probe batches) pass the step filter: --steps -5 exported only them
    with pytest.raises(ShareError, match=f"--steps {steps[-1]}: no checkpoint") as error:
        export_dataset(source, tmp_path / "bad", models=["m1"], steps=steps)
    assert "0, 10, 20" in error.value.fix
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("inside", ["sketches/x", "_staging/x", "."])
def test_an_export_into_the_warehouse_is_refused_and_gc_keeps_its_files(tmp_path, inside, capsys):
    root = tmp_path / "warehouse"
    build_warehouse(root, models=("m1",), steps=(0,))
    before = tree_hash(root)
    dest = root / inside
    assert main(["share", "export", str(dest), "--root", str(root)]) == 2
    assert f"is inside the warehouse {root}" in capsys.readouterr().err
    assert tree_hash(root) == before
    assert main(["gc", "--root", str(root), "--grace", "0"]) == 0 and tree_hash(root) == before


def test_an_export_onto_a_file_or_an_unmakeable_folder_says_so(source, tmp_path, capsys):
    mine = tmp_path / "mine.txt"
    mine.write_text("keep me")
    assert main(["share", "export", str(mine), "--root", str(source)]) == 2
    assert f"export folder {mine} is a file" in capsys.readouterr().err
    assert mine.read_text() == "keep me"
    assert main(["share", "export", str(mine / "x"), "--root", str(source)]) == 2
    err = capsys.readouterr().err
    assert f"cannot make the export folder {mine / 'x'}" in err and "Traceback" not in err


def test_round_trip_every_view_returns_the_same_rows(source, exported, tmp_path):
    target = tmp_path / "wh"
    report = import_dataset(exported, target)
    assert len(report.imported) == len(MODELS) * (1 + len(STEPS)) and not report.present
    assert view_rows(target) == view_rows(source)
    assert sum(len(rows) for rows in view_rows(target).values()) > 50
    entries = read_entries(manifest_path(target))
    assert len({e.line for e in entries}) == 1  # one batch line: all or nothing
    meta = next(e.meta for e in entries if e.task_id == "t-m1-10")
    assert meta["imported_from"] == exported.name  # the folder's name: no path of the machine is stored
    assert meta["original_task_id"] == "t-m1-10"
    assert meta["code_version"] == "0.1.0+test"  # the original provenance is kept


def test_importing_twice_changes_nothing(exported, tmp_path):
    target = tmp_path / "wh"
    import_dataset(exported, target)
    before = tree_hash(target)
    report = import_dataset(exported, target)
    assert report.imported == [] and len(report.present) == len(MODELS) * (1 + len(STEPS))
    assert tree_hash(target) == before


def test_import_into_a_warehouse_with_other_rows_merges(source, exported, tmp_path):
    target = tmp_path / "wh"
    build_warehouse(target, models=("m3",), steps=(5,))
    import_dataset(exported, target)
    mine = view_rows(tmp_path / "wh")
    assert {r[1] for r in mine["checkpoints"]} == {"m1", "m2", "m3"}
    assert len(mine["sketches"]) == len(view_rows(source)["sketches"]) + 4


def test_import_of_more_tables_of_a_known_task_adds_only_them(source, tmp_path):
    export_dataset(source, tmp_path / "sk", tables=["sketches"])
    export_dataset(source, tmp_path / "all")
    target = tmp_path / "wh"
    import_dataset(tmp_path / "sk", target)
    report = import_dataset(tmp_path / "all", target)
    assert set(report.imported) == {f"t-{m}-{s}" for m in MODELS for s in STEPS} | {
        f"probe-{m}" for m in MODELS
    }
    assert view_rows(target) == view_rows(source)


def test_same_key_with_other_values_is_refused_naming_the_rows(exported, tmp_path):
    target = tmp_path / "wh"
    build_warehouse(target, models=("m2",), steps=(10,), seed=1)  # same keys and task ids, other values
    before = tree_hash(target)
    with pytest.raises(ShareError) as error:
        import_dataset(exported, target)
    text = str(error.value)
    assert "sketches suite=toy model=m2 run_id=toy.m2 step=10" in text and "layer=0 site=attn_out" in text
    assert "differs in gram, gram_norm" in text and "nothing was imported" in text
    assert error.value.fix
    assert tree_hash(target) == before


def test_same_rows_under_another_task_id_are_refused_not_repeated(source, exported, tmp_path):
    target = tmp_path / "wh"
    w = Warehouse(target)
    w.commit("other-task", SUITE, "m1", {"spectra": checkpoint("m1", 20)["spectra"]}, {"step": 20})
    before = tree_hash(target)
    with pytest.raises(ShareError, match="already present"):
        import_dataset(exported, target)
    assert tree_hash(target) == before


def test_newer_schema_version_is_refused_with_the_version(exported, tmp_path):
    folder = tmp_path / "future"
    import shutil

    shutil.copytree(exported, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["schema_version"] = schema.SCHEMA_VERSION + 1
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ShareError, match=f"schema version {schema.SCHEMA_VERSION + 1}, newer") as error:
        import_dataset(folder, tmp_path / "wh")
    assert "upgrade layerlake" in error.value.fix
    assert not (tmp_path / "wh").exists()


def test_torn_batch_line_hides_the_whole_import(exported, tmp_path):
    target = tmp_path / "wh"
    build_warehouse(target, models=("m3",), steps=(5,))
    mine = view_rows(target)
    import_dataset(exported, target)
    path = manifest_path(target)
    data = path.read_bytes()
    path.write_bytes(data[:-40])  # a crash mid-append: the batch line loses its end
    assert view_rows(target) == mine


def test_attach_serves_a_shared_folder_beside_the_local_warehouse(source, tmp_path):
    export_dataset(source, tmp_path / "m2", models=["m2"])
    local = tmp_path / "wh"
    build_warehouse(local, models=("m1",))
    con = attach(tmp_path / "m2", local)
    got = con.sql("select model, count(*) from sketches group by model order by model").fetchall()
    assert got == [("m1", 12), ("m2", 12)]
    shared = con.sql(
        "select distinct task_id, code_version from manifest where model = 'm2' order by 1"
    ).fetchall()
    assert shared[0] == ("probe-m2", None) and shared[1] == ("t-m2-0", "0.1.0+test")
    with pytest.raises(Exception, match="(?i)permission|disabled"):
        con.sql(f"copy (select 1) to '{tmp_path / 'out.csv'}'").fetchall()
    con.close()
    # an export of the local warehouse itself adds no row twice
    assert view_rows(source, attach_=(tmp_path / "m2",)) == view_rows(source)


def test_attach_without_a_local_warehouse_and_cli(source, exported, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LAYERLAKE_DATA", str(tmp_path / "nothing"))
    con = attach(exported)
    assert con.sql("select count(*) from spectra").fetchall() == [(len(MODELS) * len(STEPS) * 2,)]
    con.close()
    sql = "select model, max(step) as last from checkpoints group by model order by model"
    assert main(["share", "attach", str(exported), "--sql", sql, "--verify"]) == 0
    out = capsys.readouterr().out
    assert "m1" in out and "m2" in out and "20" in out


def test_cli_export_import_and_errors(source, tmp_path, capsys):
    dest, target = tmp_path / "ex", tmp_path / "wh"
    assert (
        main(["share", "export", str(dest), "--root", str(source), "--models", "m1", "--steps", "0,20"]) == 0
    )
    assert "exported 3 tasks" in capsys.readouterr().out
    assert main(["share", "import", str(dest), "--root", str(target), "--dry-run"]) == 0
    assert "would import 3 tasks" in capsys.readouterr().out and not target.exists()
    assert main(["share", "import", str(dest), "--root", str(target)]) == 0
    assert "imported 3 tasks" in capsys.readouterr().out
    assert main(["share", "export", str(dest), "--root", str(source)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_share_never_imports_torch_transformers_or_ray():
    code = (
        "import sys, warehouse.share, warehouse.share.command\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'ray'))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_real_extraction_round_trips_and_reruns_skip_imported_tasks(tiny_suite, tmp_path):
    """Integration: rows of the real pipeline export, import, give the same views, and an extract
    into the importing warehouse finds every task already committed."""
    import dataclasses

    from layerlake.etl.driver import run_extract

    settings, _ = tiny_suite

    def under(data: Path):
        paths = dataclasses.replace(
            settings.paths, data=str(data), warehouse=str(data / "warehouse"), runs=str(data / "runs")
        )
        return dataclasses.replace(settings, paths=paths, progress=False)

    theirs, mine = under(tmp_path / "a"), under(tmp_path / "b")
    assert run_extract(theirs).ok
    export_dataset(theirs.paths.warehouse, tmp_path / "shared")
    card = (tmp_path / "shared" / "README.md").read_text()
    assert "tiny-a" in card and "tiny-b" in card and "debiased" in card
    import_dataset(tmp_path / "shared", mine.paths.warehouse)
    assert view_rows(Path(mine.paths.warehouse)) == view_rows(Path(theirs.paths.warehouse))
    report = run_extract(mine)
    assert report.committed == [] and report.skipped == report.planned > 0


def test_card_and_croissant_name_licenses_and_citations_and_no_machine_path(tmp_path):
    """The export's license and citation, and those of imported rows (they keep theirs), are in the card
    and in croissant.json, which mlcroissant validates without a warning; no path of this machine is."""
    import subprocess
    import sys

    from test_import_metrics import write_csv

    root = tmp_path / "warehouse"
    build_warehouse(root, models=("m1",), steps=(0, 10))
    csv = write_csv(tmp_path / "paper.csv")
    assert main(["import-metrics", str(csv), "--source", "paper", "--suite", SUITE, "--root", str(root),
                 "--license", "MIT", "--citation", "@inproceedings{diehl2024tending}"]) == 0  # fmt: skip
    assert main(["share", "export", str(tmp_path / "out"), "--root", str(root)]) == 0
    card = (tmp_path / "out" / "README.md").read_text()
    croissant = json.loads((tmp_path / "out" / "croissant.json").read_text())
    assert "CC-BY-4.0" in card and "`MIT`" in card and "@inproceedings{diehl2024tending}" in card
    assert croissant["license"] == [
        "https://spdx.org/licenses/CC-BY-4.0.html",
        "https://spdx.org/licenses/MIT.html",
    ]
    assert "diehl2024tending" in croissant["citeAs"]
    assert "biased estimator, as layerlake's recipes by default" in card
    for name in ("README.md", "croissant.json", "manifest.json"):
        text = (tmp_path / "out" / name).read_text()
        assert str(tmp_path) not in text and str(Path.home()) + "/" not in text, name
    validate = [sys.executable, "-m", "mlcroissant.scripts.validate", "--jsonld", "croissant.json"]
    done = subprocess.run(validate, cwd=tmp_path / "out", capture_output=True, text=True, timeout=300)
    if "No module named" in done.stderr:
        pytest.skip("mlcroissant (the dev extra) is not installed")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "WARNING" not in done.stderr and "warning(s)" not in done.stderr, done.stderr[-2000:]
