"""Every architecture family through the real pipeline: a tiny suite of one GPT-NeoX, one LLaMA-style
(grouped-query attention) and one GPT-2 model, trained offline by `suite build`, extracted with
gradients, and queried; and a model of an unknown family refused before any task runs."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import pytest
from conftest import compose_settings

from layerlake import warehouse
from layerlake.etl.driver import run_extract
from layerlake.etl.errors import ExtractionError
from layerlake.etl.suite.command import build
from layerlake.queries import run_recipe

FAMILY_OVERRIDES = (
    "suite.models=[{name:tiny-neox,n_layers:1,d_model:32,n_heads:2,d_mlp:64},"
    "{name:tiny-llama,n_layers:2,d_model:32,n_heads:4,n_kv_heads:2,d_mlp:64,architecture:llama},"
    "{name:tiny-gpt2,n_layers:2,d_model:32,n_heads:2,d_mlp:64,architecture:gpt2}]",
    "suite.steps=[0,4,16]",
    "suite.train.max_steps=16",
    "extract.gradients=true",
    "extract.store_activations=true",
    "probe.positions=all",  # 8 x 32 = 256 probe rows, more than any site's 32 features: CCA is not trivially 1
)
SITES = {"attn_out", "mlp_out", "resid_post", "ov"}
MATRICES = {
    "gpt_neox": {"query_key_value", "query", "key", "value", "dense", "dense_h_to_4h", "dense_4h_to_h", "ov"},
    "llama": {"query", "key", "value", "dense", "gate_proj", "up_proj", "dense_4h_to_h", "ov"},
    "gpt2": {"query_key_value", "query", "key", "value", "dense", "dense_h_to_4h", "dense_4h_to_h", "ov"},
}


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    data = tmp_path_factory.mktemp("families")
    settings = compose_settings(data, *FAMILY_OVERRIDES)
    assert build(settings) == 0
    said = io.StringIO()
    with contextlib.redirect_stderr(said):
        report = run_extract(settings)
    assert report.ok, report.failed
    # before the run: what storing the activations costs (3 steps; layers x 4 sites x 256 rows x 32 x 2 bytes)
    expected_kib = 3 * (1 + 2 + 2) * 4 * 256 * 32 * 2 / 1024
    assert f"probe activations of 9 checkpoint(s) take about {expected_kib:,.1f} KiB" in said.getvalue()
    return settings


def test_every_family_is_extracted_with_its_sites_and_matrices(extracted):
    con = warehouse.connect(extracted.paths.warehouse)
    try:
        kinds = dict(con.sql("select distinct model, architecture from checkpoints").fetchall())
        assert kinds == {"tiny-neox": "gpt_neox", "tiny-llama": "llama", "tiny-gpt2": "gpt2"}
        for model, family in kinds.items():
            layers = {"tiny-neox": 1, "tiny-llama": 2, "tiny-gpt2": 2}[model]
            sites = con.execute(
                "select layer, list(distinct site) from sketches where model = ? and head is null group by layer",
                [model],
            ).fetchall()
            assert {layer for layer, _ in sites} == set(range(layers))
            assert all(set(s) == SITES for _, s in sites), (model, sites)
            for tensor in ("weight", "grad"):
                matrices = {m for (m,) in con.execute(
                    "select distinct matrix from spectra where model = ? and tensor = ?", [model, tensor]
                ).fetchall()}  # fmt: skip
                want = MATRICES[family] | ({"ov_product_rule"} if tensor == "grad" else set())  # grad only
                assert matrices == want, (model, tensor, matrices)
        heads = con.execute(
            "select count(distinct head) from sketches where model = 'tiny-llama' and site = 'ov'"
        ).fetchall()[0][0]
        assert heads == 4  # one per query head, each reading its key/value head
        shapes = dict(con.execute(
            "select matrix, any_value([rows, cols]) from spectra where model = 'tiny-llama' and head is null "
            "group by matrix"
        ).fetchall())  # fmt: skip
        assert shapes["key"] == [16, 32] and shapes["value"] == [16, 32] and shapes["query"] == [32, 32]
        table = run_recipe(con, "convergence", {})
        assert set(table.column("model").to_pylist()) == set(kinds)
        stored = con.sql("select model, count(*) from activations group by model").fetchall()
        assert dict(stored) == {"tiny-neox": 3 * 1 * 4, "tiny-llama": 3 * 2 * 4, "tiny-gpt2": 3 * 2 * 4}
        similar = con.sql(
            "select a.model, a.site, pwcca(a.x, a.d, b.x, b.d) as p, b.step from activations a "
            "join activations b using (model, run_id, layer, site, probe_id, n) "
            "where a.step = 16 and a.layer = 0"
        ).fetchall()
        by_step = {(m, site, step): p for m, site, p, step in similar}
        assert all(abs(p - 1) < 1e-3 for (_, _, step), p in by_step.items() if step == 16)  # itself
        assert all(0 < p < 1 for (_, _, step), p in by_step.items() if step == 0)
    finally:
        con.close()


def test_a_model_of_an_unknown_family_fails_before_any_task_runs(extracted, tmp_path):
    suites = tmp_path / "suites"
    shutil.copytree(extracted.paths.suites, suites)
    config_file = suites / "embedded" / "tiny-gpt2" / "step4" / "config.json"
    config = json.loads(config_file.read_text())
    config["model_type"] = "bloom"  # a family with no site layout
    config_file.write_text(json.dumps(config))
    settings = compose_settings(tmp_path, *FAMILY_OVERRIDES, f"paths.suites={suites}", "steps.only=[4,16]")
    with pytest.raises(
        ExtractionError, match=r"tiny-gpt2 \(embedded/tiny-gpt2/step4\): model type 'bloom'"
    ) as error:
        run_extract(settings)
    assert "gpt2 (gpt2)" in error.value.message and "docs/families.md" in error.value.fix
    assert not list((tmp_path / "warehouse").rglob("*.parquet"))  # no task ran
