"""Declared layouts: presets fitted to real model classes (or faithful re-implementations where the library
cannot install here), layouts refused with the pattern named, YAML round trips, and the rows of a custom
(nanoGPT-style) model recomputed with plain torch hooks and numpy."""

from __future__ import annotations

import dataclasses

import lib_models
import nanogpt
import numpy as np
import pytest
import torch

from layerlake.core.errors import ConfigError
from layerlake.core.layouts import PRESETS, Layout, load_layout
from layerlake.etl import capture, layouts, sites
from layerlake.etl.errors import ExtractionError
from layerlake.etl.extract import capture_targets, extract_from_model
from layerlake.etl.ov_gradient import OvGradient
from layerlake.etl.task import CheckpointRef, ExtractOptions, ProbeBatch
from layerlake.warehouse.gram import unpack

REF = CheckpointRef("tiny", "m", 1, "step1", 1, "local", "/nowhere")
IDS = torch.randint(0, 40, (6, 8), generator=torch.Generator().manual_seed(2))
PROBE = ProbeBatch(
    "p",
    "test",
    tuple(tuple(r) for r in IDS.tolist()),
    tuple((s, t) for s in range(6) for t in (3, 7)),
    "sample",
)


def olmo_core_real():
    pytest.importorskip(
        "olmo_core", reason="ai2-olmo-core cannot install beside transformers 5 (see lib_models)"
    )
    from olmo_core.nn.transformer import TransformerConfig

    config = TransformerConfig.llama_like(d_model=16, vocab_size=40, n_layers=2, n_heads=4, n_kv_heads=2)
    return lib_models.randomise(config.build(init_device="cpu"))


LIBRARY_MODELS = {  # preset -> model class, d_model, heads, kv heads, the MLP's input maps
    "nanogpt": (lambda: nanogpt.gpt(bias=False), 16, 4, 4, {"dense_h_to_4h"}),
    "litgpt": (lambda: lib_models.randomise(lib_models.LitGPT()), 16, 4, 2, {"gate_proj", "up_proj"}),
    "olmo_core": (
        lambda: lib_models.randomise(lib_models.OlmoCoreTransformer()),
        16,
        4,
        2,
        {"gate_proj", "up_proj"},
    ),
    "torchtitan_llama": (
        lambda: lib_models.randomise(lib_models.Llama3Model()),
        16,
        4,
        2,
        {"gate_proj", "up_proj"},
    ),
}
CASES = [(p, p) for p in LIBRARY_MODELS] + [("olmo_core", "olmo_core-real")]


def build(case: str):
    return olmo_core_real() if case == "olmo_core-real" else LIBRARY_MODELS[case][0]()


@pytest.mark.parametrize(("preset", "case"), CASES)
def test_each_preset_fits_its_library_model_and_gives_the_ov_gradient(preset, case):
    model = build(case).double()
    _, d, heads, kv, mlp_in = LIBRARY_MODELS[preset]
    fitted = layouts.fit(model, preset)
    assert fitted.shape == sites.Shape(2, d, heads, kv, d // heads)
    assert [b.index for b in fitted.blocks] == [0, 1]
    tables, _ = extract_from_model(
        model, REF, "f" * 64, PROBE, ExtractOptions(gradients=True, dtype="float64"), layout=preset
    )
    grads = {r["matrix"] for r in tables["spectra"].to_pylist() if r["tensor"] == "grad"}
    qkv = (
        {"query_key_value", "query", "key", "value"} if fitted.layout.fused_qkv else {"query", "key", "value"}
    )
    assert grads == qkv | {"dense", "dense_4h_to_h", "ov", "ov_product_rule"} | mlp_in
    # the ov gradient reproduces W_O's (no V bias in these): dL/dW_O_h = G_h W_V_h^T
    ov = OvGradient(fitted)
    model.zero_grad(set_to_none=True)
    capture.run_pass(model, IDS, torch.tensor(PROBE.positions), capture_targets(fitted, ("resid_post",)),
                     gradients=True, batch_size=4, call=fitted.layout.call, ov_gradient=ov)  # fmt: skip
    dh = d // heads
    for block in fitted.blocks:
        w_v = sites.split_value_weight(block.read(block.value_matrix), fitted.layout, fitted.shape, "true_v")
        g_o = block.read("dense", "grad")
        for h in range(heads):
            torch.testing.assert_close(
                ov.g[block.index][h] @ w_v[h].T, g_o[:, h * dh : (h + 1) * dh], rtol=1e-7, atol=1e-10
            )


# -- faults: a layout that does not fit is refused, naming what ---------------------------------------


def test_a_pattern_that_matches_nothing_is_named():
    layout = dataclasses.replace(PRESETS["nanogpt"], name="mine", out="attn.o_proj.weight")
    with pytest.raises(
        ExtractionError, match=r"out pattern 'attn.o_proj.weight' matched no weight of block transformer.h.0"
    ) as error:
        layouts.fit(nanogpt.gpt(), layout)
    assert "attn.c_proj.weight" in error.value.message  # what is there instead
    with pytest.raises(ExtractionError, match=r"blocks pattern 'model.layers.\*' matched no module"):
        layouts.fit(nanogpt.gpt(), "llama")


def test_a_layout_matching_two_weights_for_one_site_is_refused_naming_both():
    layout = dataclasses.replace(PRESETS["nanogpt"], name="loose", mlp_out="mlp.c_*.weight")
    with pytest.raises(
        ExtractionError, match="matches 2 weights of block transformer.h.0 for one site"
    ) as error:
        layouts.fit(nanogpt.gpt(), layout)
    assert "mlp.c_fc.weight and mlp.c_proj.weight" in error.value.message
    loose_attention = dataclasses.replace(PRESETS["nanogpt"], name="loose2", attention="*")
    with pytest.raises(ExtractionError, match="attention pattern '\\*' matches 4 modules"):
        layouts.fit(nanogpt.gpt(), loose_attention)


def test_head_counts_that_do_not_fit_the_weights_are_refused():
    with pytest.raises(ExtractionError, match="5 heads and 5 key/value heads do not fit W_O"):
        layouts.fit(nanogpt.gpt(), dataclasses.replace(PRESETS["nanogpt"], name="x", n_heads=5))
    with pytest.raises(ExtractionError, match="n_heads path 'config.heads' finds nothing"):
        layouts.fit(nanogpt.gpt(), dataclasses.replace(PRESETS["nanogpt"], name="x", n_heads="config.heads"))


def test_tracking_refuses_a_layout_that_does_not_fit_when_it_starts(tmp_path):
    import layerlake

    with pytest.raises(
        ExtractionError, match=r"value \(fused QKV\) pattern 'attn.qkv.weight' matched no weight"
    ):
        layerlake.track(nanogpt.gpt(), probe=IDS, layout="litgpt", warehouse=tmp_path / "w")
    assert not list((tmp_path / "w").rglob("*.parquet"))  # nothing committed


def test_layouts_load_from_yaml_and_bad_ones_name_the_key(tmp_path):
    import yaml

    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(PRESETS["litgpt"].to_dict()))
    assert load_layout(path) == PRESETS["litgpt"]
    path.write_text(yaml.safe_dump({**PRESETS["litgpt"].to_dict(), "heads": 4}))
    with pytest.raises(ConfigError, match="unknown layout key\\(s\\) heads"):
        load_layout(path)
    path.write_text(yaml.safe_dump({**PRESETS["litgpt"].to_dict(), "qkv": "fused"}))
    with pytest.raises(ConfigError, match="qkv 'fused' is not one of: separate, interleaved, stacked"):
        load_layout(path)
    with pytest.raises(ConfigError, match="neither a preset nor a YAML file"):
        load_layout("nanogtp")
    with pytest.raises(ConfigError, match="dense_h_to_4h alone, or gate_proj and up_proj"):
        Layout(**{**PRESETS["nanogpt"].__dict__, "mlp_in": (("gate_proj", "mlp.c_fc.weight"),)})


# -- an independent check: a custom model's rows from plain hooks and numpy -----------------------------


def plain_capture(model) -> dict:
    """resid_post, attn_out and mlp_out of every block at the probe positions, by plain forward hooks."""
    found, handles = {}, []
    pos = np.array(PROBE.positions)
    for i, block in enumerate(model.transformer.h):
        for site, module in (
            ("resid_post", block),
            ("attn_out", block.attn.c_proj),
            ("mlp_out", block.mlp.c_proj),
        ):
            handles.append(module.register_forward_hook(
                lambda m, a, out, key=(i, site): found.__setitem__(key, out.detach().double().numpy()[pos[:, 0], pos[:, 1]])
            ))  # fmt: skip
    try:
        with torch.no_grad():
            model(IDS)
    finally:
        for handle in handles:
            handle.remove()
    return found


def np_cka(x: np.ndarray, y: np.ndarray) -> float:
    xc, yc = x - x.mean(0), y - y.mean(0)
    return float(np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)))


def test_a_custom_models_rows_equal_plain_hooks_and_numpy():
    model = nanogpt.gpt(seed=4)
    weights = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    acts = plain_capture(model)
    tables, _ = extract_from_model(model, REF, "f" * 64, PROBE, ExtractOptions(), layout="nanogpt")
    stats = {(r["layer"], r["site"]): r for r in tables["activation_stats"].to_pylist() if r["head"] is None}
    for key, x in acts.items():
        row = stats[key]
        assert row["rms"] == pytest.approx(np.sqrt(np.mean(x**2)), rel=1e-5)
        assert row["mean_norm"] == pytest.approx(np.linalg.norm(x, axis=1).mean(), rel=1e-5)
        sv = np.linalg.svd(x - x.mean(0), compute_uv=False)
        np.testing.assert_allclose(row["sv"], sv, rtol=0, atol=1e-4 * sv[0])
    grams = {
        (r["layer"], r["site"]): unpack(r["gram"], r["n"]).astype(np.float64)
        for r in tables["sketches"].to_pylist()
        if r["head"] is None and r["estimator"] == "biased"
    }
    for a, b in (((0, "resid_post"), (1, "resid_post")), ((0, "attn_out"), (1, "mlp_out"))):
        stored = float((grams[a] * grams[b]).sum() / (np.linalg.norm(grams[a]) * np.linalg.norm(grams[b])))
        assert stored == pytest.approx(np_cka(acts[a], acts[b]), abs=1e-5)
    weight_rows = [r for r in tables["spectra"].to_pylist() if r["tensor"] == "weight"]  # not the gradients'
    spectra = {(r["layer"], r["matrix"], r["head"]): r["sv"] for r in weight_rows}
    assert len(spectra) == len(weight_rows)  # one row per matrix and head
    for layer in range(2):
        p = f"transformer.h.{layer}."
        c_attn = weights[p + "attn.c_attn.weight"]  # (3 d, d): rows [Q | K | V]
        w_o = weights[p + "attn.c_proj.weight"]
        expected = {
            "query_key_value": c_attn, "query": c_attn[:16], "key": c_attn[16:32], "value": c_attn[32:],
            "dense": w_o, "dense_h_to_4h": weights[p + "mlp.c_fc.weight"],
            "dense_4h_to_h": weights[p + "mlp.c_proj.weight"], "ov": w_o @ c_attn[32:],
        }  # fmt: skip
        for matrix, m in expected.items():
            want = np.linalg.svd(m, compute_uv=False)
            np.testing.assert_allclose(spectra[(layer, matrix, None)], want, rtol=0, atol=1e-8 * want[0])
        want = np.linalg.svd(w_o[:, 4:8] @ c_attn[36:40], compute_uv=False)  # head 1
        np.testing.assert_allclose(spectra[(layer, "ov", 1)], want, rtol=0, atol=1e-8 * want[0])
    (row,) = [
        r
        for r in tables["activation_stats"].to_pylist()
        if (r["layer"], r["site"], r["head"]) == (1, "ov", 2)
    ]
    v = acts_v = None  # the ov site: V of head 2 at the probe positions times W_O's columns of head 2
    with torch.no_grad():
        hidden = model.transformer.wte(IDS) + model.transformer.wpe(torch.arange(IDS.shape[1]))
        hidden = model.transformer.h[0](hidden)
        acts_v = model.transformer.h[1].attn.c_attn(model.transformer.h[1].ln_1(hidden)).double().numpy()
    pos = np.array(PROBE.positions)
    v = acts_v[pos[:, 0], pos[:, 1]][:, 32 + 8 : 32 + 12]
    ov = v @ weights["transformer.h.1.attn.c_proj.weight"][:, 8:12].T
    assert row["max_abs"] == pytest.approx(np.abs(ov).max(), rel=1e-5)


def test_a_tracked_custom_model_stores_the_rows_of_its_layout(tmp_path):
    """A nanoGPT-style model trained a few steps under ``track(layout="nanogpt")``: its snapshot's rows
    are in the warehouse, named by the layout, with the weight spectra numpy gives the live weights."""
    import layerlake

    model = nanogpt.gpt(seed=6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with layerlake.track(model, layout="nanogpt", probe=IDS, cadence=[2], warehouse=tmp_path / "w") as run:
        for step in range(3):
            model.train()
            _, loss = model(IDS, torch.roll(IDS, -1, dims=1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            run.log(step, loss=loss.item())
            if step == 2:
                c_fc = model.transformer.h[1].mlp.c_fc.weight.detach().double().numpy().copy()
            run.snapshot(step, model)
    assert run.failures == [] and run.snapshots == [2]
    con = layerlake.connect(tmp_path / "w")
    try:
        (row,) = con.sql(
            "select architecture, n_layers, d_model, n_heads, d_head from checkpoints"
        ).fetchall()
        assert row == ("nanogpt", 2, 16, 4, 4)
        (sv,) = con.sql(
            "select sv from spectra where tensor = 'weight' and matrix = 'dense_h_to_4h' and layer = 1"
        ).fetchall()[0]
        want = np.linalg.svd(c_fc, compute_uv=False)
        np.testing.assert_allclose(sv, want, rtol=0, atol=1e-8 * want[0])
        grads = {
            m for (m,) in con.sql("select distinct matrix from spectra where tensor = 'grad'").fetchall()
        }
        assert {"ov", "ov_product_rule"} <= grads
    finally:
        con.close()
