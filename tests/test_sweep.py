"""``layerlake query -m <recipe> threshold=a,b,c``: one result per job and one aggregated table per sweep,
with the swept parameters as columns; a failed job is reported by name while the others still land."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from layerlake import queries, warehouse
from layerlake.cli.main import main
from layerlake.queries.imports import import_table, validate

MODELS = ("m-small", "m-large")


def curves_warehouse(root: Path) -> None:
    """Two models, two layers each, CKA curves over 4 steps, imported through the real commit."""
    values = {("m-small", 0): [0.2, 0.85, 0.93, 1.0], ("m-small", 1): [0.5, 0.82, 0.96, 1.0],
              ("m-large", 0): [0.3, 0.97, 0.91, 1.0], ("m-large", 1): [0.81, 0.88, 0.99, 1.0]}  # fmt: skip
    rows = [
        {"model": m, "step": s, "layer": layer, "site": "ov", "metric": "cka_scores", "value": v}
        for (m, layer), curve in values.items() for s, v in zip((0, 10, 20, 30), curve, strict=True)
    ]  # fmt: skip
    import_table(validate(pa.Table.from_pylist(rows), {}, "test"), root, "embedded", "fx", {})


def test_sweep_writes_one_aggregate(tmp_path, capsys):
    curves_warehouse(tmp_path / "warehouse")
    sweep = tmp_path / "sweep"
    code = main(["query", "-m", "stabilisation", "source=fx", "threshold=0.8,0.9,0.95",
                 f"paths.data={tmp_path}", f"hydra.sweep.dir={sweep}"])  # fmt: skip
    assert code == 0
    assert str(sweep / "aggregate.parquet") in capsys.readouterr().out
    table = pq.read_table(sweep / "aggregate.parquet")
    assert table.column_names[:2] == ["job", "threshold"]
    rows = table.to_pylist()
    assert len(rows) == 3 * 4  # a row per (threshold, model, layer)
    assert {(r["threshold"], r["model"]) for r in rows} == {(t, m) for t in (0.8, 0.9, 0.95) for m in MODELS}
    con = warehouse.connect(tmp_path / "warehouse")
    for threshold in (0.8, 0.9, 0.95):
        direct = queries.run_recipe(
            con, "stabilisation", {"source": "fx", "threshold": threshold}
        ).to_pylist()
        swept = [
            {k: v for k, v in r.items() if k not in ("job", "threshold")}
            for r in rows
            if r["threshold"] == threshold
        ]
        assert swept == direct
    # hand-checked: m-large layer 0 dips to 0.91 at step 20, so it is stable from 10 at 0.9 but from 20 at 0.95
    large0 = {
        r["threshold"]: r["stabilisation_step"] for r in rows if (r["model"], r["layer"]) == ("m-large", 0)
    }
    assert large0 == {0.8: 10, 0.9: 10, 0.95: 30}
    for job in range(3):
        assert (sweep / str(job) / "result.parquet").is_file()


def test_failed_job_is_reported_and_the_others_land(tmp_path, capsys):
    curves_warehouse(tmp_path / "warehouse")
    sweep = tmp_path / "sweep"
    code = main(["query", "-m", "stabilised_share", "source=fx", "by_fraction=0.5,oops,1.0",
                 f"paths.data={tmp_path}", f"hydra.sweep.dir={sweep}"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "failed: job 1" in err and "by_fraction=oops" in err and "parameter $by_fraction" in err
    job = json.loads((sweep / "1" / "job.json").read_text())
    assert job["status"] == "failed" and "by_fraction" in job["error"]
    rows = pq.read_table(sweep / "aggregate.parquet").to_pylist()
    assert sorted({r["by_fraction"] for r in rows}) == [0.5, 1.0]
    assert json.loads((sweep / "sweep.json").read_text())["failed"] == [str(sweep / "1")]
