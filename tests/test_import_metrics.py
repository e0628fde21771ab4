"""``layerlake import-metrics``: validated before anything is written, one real commit per model,
idempotent, replaced cleanly, and readable by the curve recipes like computed CKA."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from layerlake import queries, warehouse
from layerlake.cli.main import main

HEADER = "model,step,layer,module,metric,value\n"
ROWS = [
    ("pythia-70m-deduped", 0, 0, "attention.dense", "cka_scores", 0.25),
    ("pythia-70m-deduped", 10, 0, "attention.dense", "cka_scores", 1.0),
    ("pythia-70m-deduped", 0, 1, "attention.dense", "cka_scores", 0.75),
    ("pythia-70m-deduped", 10, 1, "attention.dense", "cka_scores", 1.0),
    ("pythia-70m-deduped", 0, 0, "mlp.dense_4h_to_h", "cka_scores", 0.5),
    ("pythia-70m-deduped", 10, 0, "mlp.dense_4h_to_h", "cka_scores", 1.0),
    ("pythia-70m-deduped", 0, 0, "attention.query_key_value", "cka_scores", 0.1),
    ("pythia-160m-deduped", 0, 0, "attention.dense", "cka_scores", 0.5),
    ("pythia-160m-deduped", 10, 0, "attention.dense", "cka_scores", 1.0),
    ("pythia-160m-deduped", 0, 0, "attention.dense", "weight_magnitudes", ""),
]


def write_csv(path: Path, rows=ROWS, header=HEADER) -> Path:
    path.write_text(header + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def run(tmp_path: Path, *args: str) -> int:
    return main(
        ["import-metrics", *args, "--source", "paper", "--suite", "pythia", "--root", str(tmp_path / "wh")]
    )


def manifest_lines(tmp_path: Path) -> list[str]:
    path = tmp_path / "wh" / "_manifest" / "commits.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def test_import_maps_sites_and_commits_per_model(tmp_path, capsys):
    assert run(tmp_path, str(write_csv(tmp_path / "m.csv"))) == 0
    con = warehouse.connect(tmp_path / "wh")
    rows = con.sql(
        "select suite, model, source, step, layer, site, metric, value from imported_metrics order by all"
    ).fetchall()
    assert len(rows) == len(ROWS)
    assert {r[5] for r in rows} == {"ov", "mlp_out", "qkv_last_third"}
    assert {(r[0], r[2]) for r in rows} == {("pythia", "paper")}
    assert ("pythia", "pythia-160m-deduped", "paper", 0, 0, "ov", "weight_magnitudes", None) in rows
    tasks = con.sql(
        "select distinct task_id from manifest where table_name = 'imported_metrics' order by 1"
    ).fetchall()
    assert tasks == [("import.paper.pythia-160m-deduped",), ("import.paper.pythia-70m-deduped",)]
    runs = con.sql("select run_id, kind, status from runs order by 1").fetchall()
    assert runs == [
        ("paper.pythia-160m-deduped", "import", "finished"),
        ("paper.pythia-70m-deduped", "import", "finished"),
    ]
    assert len(manifest_lines(tmp_path)) == 1  # both models and their runs in one line: all or nothing
    assert "committed" in capsys.readouterr().out


def test_reimport_is_a_noop_and_a_change_replaces(tmp_path, capsys):
    path = write_csv(tmp_path / "m.csv")
    assert run(tmp_path, str(path)) == 0
    before = manifest_lines(tmp_path)
    assert run(tmp_path, str(write_csv(tmp_path / "shuffled.csv", list(reversed(ROWS))))) == 0
    assert manifest_lines(tmp_path) == before  # same rows in another order: nothing written
    assert "unchanged" in capsys.readouterr().out
    changed = [(*r[:5], 0.3) if r[1] == 0 and r[0] == "pythia-70m-deduped" else r for r in ROWS]
    assert run(tmp_path, str(write_csv(tmp_path / "m2.csv", changed))) == 0
    assert (
        len(manifest_lines(tmp_path)) == len(before) + 1
    )  # only the changed model is re-committed (one line)
    con = warehouse.connect(tmp_path / "wh")
    assert con.sql("select count(*) from imported_metrics").fetchall() == [(len(ROWS),)]
    values = con.sql(
        "select distinct value from imported_metrics where model = 'pythia-70m-deduped' and step = 0"
    )
    assert values.fetchall() == [(0.3,)]


def test_parquet_input_with_site_column(tmp_path):
    table = pa.table({
        "model": ["a", "a"], "step": [0, 5], "layer": [0, 0], "site": ["mlp_out", "mlp_out"],
        "metric": ["cka_scores", "cka_scores"], "value": [0.5, 1.0],
    })  # fmt: skip
    pq.write_table(table, tmp_path / "m.parquet")
    assert run(tmp_path, str(tmp_path / "m.parquet")) == 0
    con = warehouse.connect(tmp_path / "wh")
    result = queries.run_recipe(con, "stabilisation", {"source": "paper", "threshold": 0.9}).to_pylist()
    assert [
        (r["model"], r["site"], r["stabilisation_step"], r["stabilisation_fraction"]) for r in result
    ] == [("a", "mlp_out", 5, 1.0)]


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        ("model,step,layer,metric,value\n", [("a", 0, 0, "m", 1.0)], "missing columns ['site']"),
        (HEADER.replace("value", "value,extra"), [(*ROWS[0], "x")], "unknown columns ['extra']"),
        (
            "model,step,layer,site,module,metric,value\n",
            [("a", 0, 0, "s", "s", "m", 1)],
            "both `site` and `module`",
        ),
        (
            HEADER,
            [("a", "ten", 0, "s", "m", 1.0)],
            "column 'step' must hold non-negative integers up to 1,000,000,000,000; 1 bad value(s) (row 5: 'ten')",
        ),
        (HEADER, [("a", 0, -1, "s", "m", 1.0)], "column 'layer' must hold non-negative integers"),
        (HEADER, [("a", 0, 0, "s", "m", "high")], "column 'value' must hold finite numbers"),
        (HEADER, [("", 0, 0, "s", "m", 1.0)], "column 'model' must hold non-empty text"),
        (HEADER, [ROWS[0], ROWS[0]], "1 (model, step, layer, site, metric) key(s) appear more than once"),
        (HEADER, [("a/b", 0, 0, "s", "m", 1.0)], "model 'a/b' cannot name a warehouse folder or file"),
    ],
)
def test_invalid_files_write_nothing(tmp_path, capsys, header, rows, message):
    good = write_csv(tmp_path / "good.csv")
    bad = write_csv(tmp_path / "bad.csv", [*ROWS[:3], *rows] if header == HEADER else rows, header)
    assert run(tmp_path, str(bad)) == 2
    assert message in capsys.readouterr().err.replace("\n", " ")
    assert manifest_lines(tmp_path) == []
    assert not (tmp_path / "wh" / "imported_metrics").exists()
    assert run(tmp_path, str(good)) == 0


def test_site_map_option_and_missing_file(tmp_path, capsys):
    path = write_csv(tmp_path / "m.csv")
    assert run(tmp_path, str(path), "--site-map", "attention.dense=attn_ov", "--no-default-site-map") == 0
    con = warehouse.connect(tmp_path / "wh")
    sites = {r[0] for r in con.sql("select distinct site from imported_metrics").fetchall()}
    assert sites == {"attn_ov", "mlp.dense_4h_to_h", "attention.query_key_value"}
    assert run(tmp_path, str(tmp_path / "nope.csv")) == 2
    assert "no metrics file" in capsys.readouterr().err


def test_importing_into_an_archived_run_is_refused_until_it_is_restored(tmp_path, capsys):
    """The rule of every writer: a write into an archived run is refused (its new rows would show while the
    rest stays hidden), the whole import with it; an import that changes nothing is no write."""
    assert run(tmp_path, str(write_csv(tmp_path / "m.csv"))) == 0
    root = tmp_path / "wh"
    assert main(["runs", "archive", "paper.pythia-70m-deduped", "--root", str(root)]) == 0
    capsys.readouterr()
    before = manifest_lines(tmp_path)
    assert run(tmp_path, str(write_csv(tmp_path / "m.csv"))) == 0  # unchanged: nothing written
    changed = [(*r[:5], 0.5) if r[4] == "cka_scores" else r for r in ROWS]
    assert run(tmp_path, str(write_csv(tmp_path / "changed.csv", changed))) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "run paper.pythia-70m-deduped is archived" in err and "cannot import into it" in err
    assert f"layerlake runs restore paper.pythia-70m-deduped --root {root}" in err
    assert manifest_lines(tmp_path) == before and not list((root / "_staging").iterdir())
    assert main(["runs", "restore", "paper.pythia-70m-deduped", "--root", str(root)]) == 0
    assert run(tmp_path, str(write_csv(tmp_path / "changed.csv", changed))) == 0
