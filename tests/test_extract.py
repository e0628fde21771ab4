"""extract_from_model end to end on tiny random models: schemas, row sets, and numbers checked by numpy."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest
import tiny_models
import torch

from layerlake.core.errors import ConfigError
from layerlake.etl.errors import ExtractionError
from layerlake.etl.extract import extract_from_model
from layerlake.etl.task import CheckpointRef, ExtractOptions, ProbeBatch
from layerlake.warehouse.gram import unpack
from layerlake.warehouse.macros import install_functions
from layerlake.warehouse.schema import TABLES
from layerlake.warehouse.writer import Warehouse

REF = CheckpointRef("tiny", "m", 64, "step64", 64 * 1024, "local", "/nowhere")
SHA = "f" * 64
_G = torch.Generator().manual_seed(11)
TOKENS = tuple(tuple(int(t) for t in row) for row in torch.randint(0, 40, (6, 10), generator=_G))
PROBE = ProbeBatch("probe-1", "test", TOKENS, tuple((s, 9) for s in range(6)) + ((0, 4), (3, 2)), "sample")


def neox(n_heads=2, seed=0):
    return tiny_models.neox(n_heads, seed, hidden_size=12, intermediate_size=20)


llama = tiny_models.llama


def rows(table: pa.Table, **where) -> list[dict]:
    return [r for r in table.to_pylist() if all(r[k] == v for k, v in where.items())]


def assert_sv_close(got, matrix: np.ndarray, rel=1e-8):
    expected = np.linalg.svd(matrix, compute_uv=False)
    got = np.asarray(got)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=rel * max(expected[0], 1e-300))


def test_tables_match_the_warehouse_schema_and_carry_identity():
    tables, timings = extract_from_model(
        neox(), REF, SHA, PROBE, ExtractOptions(kernels=("linear", "rbf"), gradients=False)
    )
    assert set(tables) == {"activation_stats", "sketches", "spectra", "matrix_stats", "activations"}
    assert tables["activations"].num_rows == 0  # extract.store_activations is off by default
    for name, table in tables.items():
        assert table.schema.equals(TABLES[name].arrow_schema()), name
        if name == "activations":
            continue  # empty: see below
        assert set(table.column("step").to_pylist()) == {64}
        assert set(table.column("weights_sha256").to_pylist()) == {SHA}
    stats = tables["activation_stats"]
    # per layer: attn_out, mlp_out, resid_post, ov (whole) + 2 ov heads
    assert stats.num_rows == 2 * (3 + 1 + 2)
    assert tables["sketches"].num_rows == stats.num_rows * 2 * 2  # kernels x estimators
    assert set(stats.column("n").to_pylist()) == {PROBE.n}
    assert set(tables["spectra"].column("probe_id").to_pylist()) == {None}
    assert set(timings) >= {"forward", "backward", "svd"} and timings["backward"] == 0.0


def _ov_by_hand(model, layer: int, v_rows: np.ndarray, n_heads: int, d_head: int, slice_: str):
    """OV activations from the fused qkv output rows, by index arithmetic on the interleaved layout."""
    w_o = model.gpt_neox.layers[layer].attention.dense.weight.detach().double().numpy()
    heads = []
    for h in range(n_heads):
        start = h * 3 * d_head + 2 * d_head if slice_ == "true_v" else n_heads * 2 * d_head + h * d_head
        v_h = v_rows[:, start : start + d_head]
        heads.append(v_h @ w_o[:, h * d_head : (h + 1) * d_head].T)
    return sum(heads), heads


@pytest.mark.parametrize("v_slice", ["true_v", "paper_last_third"])
def test_ov_sketches_and_stats_equal_independent_ov(v_slice):
    model = neox(n_heads=2)
    with torch.no_grad():
        hidden = model(torch.tensor(TOKENS), output_hidden_states=True).hidden_states
        block = model.gpt_neox.layers[1]
        qkv = block.attention.query_key_value(block.input_layernorm(hidden[1])).double().numpy()
    pos = np.array(PROBE.positions)
    whole, heads = _ov_by_hand(model, 1, qkv[pos[:, 0], pos[:, 1]], 2, 6, v_slice)
    np.testing.assert_allclose(whole, heads[0] + heads[1], rtol=1e-12)
    tables, _ = extract_from_model(model, REF, SHA, PROBE, ExtractOptions(v_slice=v_slice))
    for head, x in [(None, whole), (1, heads[1])]:
        (stat,) = rows(tables["activation_stats"], layer=1, site="ov", head=head)
        assert stat["rms"] == pytest.approx(np.sqrt(np.mean(x**2)), rel=1e-5)
        (sk,) = rows(tables["sketches"], layer=1, site="ov", head=head, kernel="linear", estimator="biased")
        xc = x - x.mean(axis=0)
        expected = xc @ xc.T
        np.testing.assert_allclose(
            unpack(sk["gram"], sk["n"]), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()
        )
        assert sk["gram_norm"] == pytest.approx(
            np.linalg.norm(np.array(sk["gram"], dtype=np.float64)), rel=1e-12
        )


def _ov_stats(model, v_slice):
    tables, _ = extract_from_model(model, REF, SHA, PROBE, ExtractOptions(v_slice=v_slice, sites=("ov",)))
    return tables["activation_stats"].column("rms").to_pylist(), [
        r["sv"] for r in rows(tables["spectra"], matrix="ov")
    ]


def test_paper_slice_differs_from_true_v_with_several_heads_and_agrees_with_one():
    many_true, many_paper = (
        _ov_stats(neox(n_heads=2), "true_v"),
        _ov_stats(neox(n_heads=2), "paper_last_third"),
    )
    assert not np.allclose(many_true[0], many_paper[0])
    assert not np.allclose(many_true[1][0], many_paper[1][0])
    one_true, one_paper = _ov_stats(neox(n_heads=1), "true_v"), _ov_stats(neox(n_heads=1), "paper_last_third")
    assert one_true == one_paper


def test_weight_spectra_equal_numpy():
    model = neox(n_heads=2)
    weights = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    tables, _ = extract_from_model(model, REF, SHA, PROBE, ExtractOptions())
    spectra = tables["spectra"]
    names = {r["matrix"] for r in rows(spectra, tensor="weight")}
    assert names == {
        "query_key_value",
        "query",
        "key",
        "value",
        "dense",
        "dense_h_to_4h",
        "dense_4h_to_h",
        "ov",
    }
    for layer in range(2):
        p = f"gpt_neox.layers.{layer}."
        qkv = weights[p + "attention.query_key_value.weight"]  # rows: [head][q|k|v][d_head]
        w_o = weights[p + "attention.dense.weight"]
        expected = {
            ("query_key_value", None): qkv,
            ("dense", None): w_o,
            ("dense_h_to_4h", None): weights[p + "mlp.dense_h_to_4h.weight"],
            ("dense_4h_to_h", None): weights[p + "mlp.dense_4h_to_h.weight"],
        }
        v_rows = [qkv[h * 18 + 12 : h * 18 + 18] for h in range(2)]
        expected[("query", None)] = np.concatenate([qkv[h * 18 : h * 18 + 6] for h in range(2)])
        expected[("key", None)] = np.concatenate([qkv[h * 18 + 6 : h * 18 + 12] for h in range(2)])
        expected[("value", None)] = np.concatenate(v_rows)
        expected[("ov", None)] = w_o @ np.concatenate(v_rows)
        for h in range(2):
            expected[("ov", h)] = w_o[:, h * 6 : (h + 1) * 6] @ v_rows[h]
        got = {(r["matrix"], r["head"]): r for r in rows(spectra, layer=layer, tensor="weight")}
        assert got.keys() == expected.keys()
        for key, matrix in expected.items():
            assert (got[key]["rows"], got[key]["cols"]) == matrix.shape, key
            assert_sv_close(got[key]["sv"], matrix)


def test_gradient_spectra_equal_numpy_of_the_lm_loss_gradient():
    model = neox(n_heads=2, seed=3)
    ids = torch.tensor(TOKENS)
    model.zero_grad()
    model(ids, labels=ids).loss.backward()  # transformers' own mean next-token cross-entropy
    grads = {k: p.grad.double().numpy().copy() for k, p in model.named_parameters()}
    weights = {k: p.detach().double().numpy().copy() for k, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    tables, timings = extract_from_model(model, REF, SHA, PROBE, ExtractOptions(gradients=True, batch_size=4))
    grad_rows = rows(tables["spectra"], tensor="grad")
    assert {r["probe_id"] for r in grad_rows} == {"probe-1"}
    assert timings["backward"] > 0
    p = "gpt_neox.layers.0."
    w_o, g_o = weights[p + "attention.dense.weight"], grads[p + "attention.dense.weight"]
    v_rows = np.r_[12:18, 30:36]  # V of heads 0 and 1 in the fused rows [head][q|k|v][6]
    w_v, g_v = (
        weights[p + "attention.query_key_value.weight"][v_rows],
        grads[p + "attention.query_key_value.weight"][v_rows],
    )
    expected = {
        ("dense_4h_to_h", None): grads[p + "mlp.dense_4h_to_h.weight"],
        ("query_key_value", None): grads[p + "attention.query_key_value.weight"],
        # the product rule gO W_V + W_O gV, per head and per layer (the ov gradient: tests/test_ov_gradient.py)
        ("ov_product_rule", 1): g_o[:, 6:12] @ w_v[6:] + w_o[:, 6:12] @ g_v[6:],
        ("ov_product_rule", None): g_o @ w_v + w_o @ g_v,
    }
    got = {(r["matrix"], r["head"]): r["sv"] for r in grad_rows if r["layer"] == 0}
    for key, matrix in expected.items():
        assert_sv_close(got[key], matrix, rel=1e-5)
    # not the product of the two gradients (which scales with the square of the gradient)
    for head, cols in ((1, slice(6, 12)), (None, slice(None))):
        old = np.linalg.svd(g_o[:, cols] @ g_v[cols], compute_uv=False)
        chain = got[("ov_product_rule", head)]
        assert np.abs(np.asarray(chain) - old).max() > 1e-2 * chain[0]
    assert all(q.grad is None for q in model.parameters())
    assert all(q.requires_grad for q in model.parameters())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_stored_shapes_and_precision_give_each_matrix_its_numerical_rank(dtype):
    """What the rank tolerance needs is stored: with spectra's rows/cols/eps and activation_stats' n/d/eps
    the macros find the rank each matrix has by construction, and a condition number that is not noise,
    whether the pass ran in float32 (its gradients' missing directions at float32's rounding, about 1e-8
    of s_1: eps = 2^-23) or float64.

    The gradient of a matrix writing into the residual stream (dense, dense_4h_to_h) has rank d_model - 1,
    because every read of the stream goes through a LayerNorm, whose gradient is orthogonal to the ones
    vector.
    """
    model = neox(n_heads=3)  # d_model 12, d_head 4
    tables, _ = extract_from_model(model, REF, SHA, PROBE, ExtractOptions(gradients=True, dtype=dtype))
    pass_eps = float(np.finfo(dtype).eps)
    assert set(tables["activation_stats"].column("eps").to_pylist()) == {pass_eps}
    spectra_eps = set(zip(*(tables["spectra"].column(c).to_pylist() for c in ("tensor", "eps")), strict=True))
    assert spectra_eps == {("weight", float(np.finfo(np.float64).eps)), ("grad", pass_eps)}
    con = install_functions(duckdb.connect())
    con.register("spectra", tables["spectra"])
    con.register("activation_stats", tables["activation_stats"])
    spectra = con.execute(
        "select tensor, matrix, head, rows, cols, len(sv), numerical_rank(sv, rows, cols, eps),"
        " condition_number(sv, rows, cols, eps), numerical_rank(sv, rows, cols, 2.220446049250313e-16)"
        " from spectra"
    ).fetchall()
    noise_counted = 0
    for tensor, matrix, head, rows_, cols, count, rank, cond, float64_rank in spectra:
        key = (tensor, matrix, head)
        if matrix == "ov" and head is not None and tensor == "weight":  # d_model x d_model, inner size 4
            want = 4
        elif matrix == "ov_product_rule" and head is not None:  # [gO | W_O] @ [W_V ; gV]: inner size 8
            want = 8
        elif tensor == "grad" and matrix in ("dense", "dense_4h_to_h", "ov"):  # ov: delta^T (A X), delta
            # the gradient at W_O's output, written into the stream like dense's
            want = 11
        else:
            want = min(rows_, cols)
        assert count == min(rows_, cols) and rank == want, key
        assert np.isfinite(cond) and cond < 1e6, key
        noise_counted += float64_rank > want
    # float64's tolerance on a float32 pass counts the rounding of those gradients as rank: 2 layers x
    # (dense, dense_4h_to_h, ov per layer, 3 ov heads)
    assert noise_counted == (2 * (2 + 1 + 3) if dtype == "float32" else 0)
    n = PROBE.n  # 8 probe rows: a centred 8 x 12 matrix has rank <= 7, an OV head's <= d_head = 4
    stats = con.execute(
        "select site, head, n, d, len(sv), numerical_rank(sv, n, d, eps), condition_number(sv, n, d, eps)"
        " from activation_stats"
    ).fetchall()
    for site, head, n_, d, count, rank, cond in stats:
        assert (n_, d, count) == (n, 12, n)
        assert rank == (4 if head is not None else n - 1), (site, head)
        assert np.isfinite(cond) and cond < 1e6, (site, head)


def test_per_head_false_skips_head_rows():
    tables, _ = extract_from_model(neox(), REF, SHA, PROBE, ExtractOptions(per_head=False))
    for table in tables.values():
        if "head" in table.column_names:  # (activations hold whole layers only)
            assert set(table.column("head").to_pylist()) == {None}


def test_llama_gqa_extraction_uses_the_kv_group_of_each_head():
    model = llama()
    weights = {k: v.detach().double().numpy() for k, v in model.state_dict().items()}
    tables, _ = extract_from_model(model, REF, SHA, PROBE, ExtractOptions())
    stats = tables["activation_stats"]
    assert stats.num_rows == 2 * (3 + 1 + 4)
    names = {r["matrix"] for r in rows(tables["spectra"], tensor="weight")}
    assert names == {"query", "key", "value", "dense", "gate_proj", "up_proj", "dense_4h_to_h", "ov"}
    w_o = weights["model.layers.1.self_attn.o_proj.weight"]  # (16, 4 heads * 4)
    w_v = weights["model.layers.1.self_attn.v_proj.weight"]  # (2 kv heads * 4, 16)
    with torch.no_grad():
        hidden = model(torch.tensor(TOKENS), output_hidden_states=True).hidden_states
        v = model.model.layers[1].input_layernorm(hidden[1]).double().numpy() @ w_v.T
    pos = np.array(PROBE.positions)
    v = v[pos[:, 0], pos[:, 1]]
    for h in range(4):
        g = h // 2  # two query heads per kv head
        (row,) = rows(tables["spectra"], layer=1, tensor="weight", matrix="ov", head=h)
        assert_sv_close(row["sv"], w_o[:, h * 4 : (h + 1) * 4] @ w_v[g * 4 : (g + 1) * 4])
        ov_h = v[:, g * 4 : (g + 1) * 4] @ w_o[:, h * 4 : (h + 1) * 4].T
        (stat,) = rows(stats, layer=1, site="ov", head=h)
        assert stat["max_abs"] == pytest.approx(np.abs(ov_h).max(), rel=1e-5)
        np.testing.assert_allclose(
            stat["sv"],
            np.linalg.svd(ov_h - ov_h.mean(axis=0), compute_uv=False),
            rtol=0,
            atol=1e-5 * np.abs(ov_h).max(),
        )


def test_bad_options_name_the_option():
    with pytest.raises(ConfigError, match="extract.sites 'nope' is not one of"):
        ExtractOptions(sites=("attn_out", "nope"))
    with pytest.raises(ExtractionError, match="paper_last_third"):
        extract_from_model(llama(), REF, SHA, PROBE, ExtractOptions(v_slice="paper_last_third"))
    with pytest.raises(ConfigError, match="extract.kernels 'cosine'"):
        ExtractOptions(kernels=("cosine",))
    with pytest.raises(ConfigError, match="executor.dtype 'float8'"):
        ExtractOptions(dtype="float8")


def test_bfloat16_pass_keeps_weight_spectra_of_the_loaded_weights():
    model = neox()
    w = model.gpt_neox.layers[0].mlp.dense_4h_to_h.weight.detach().double().numpy()
    tables, _ = extract_from_model(model, REF, SHA, PROBE, ExtractOptions(dtype="bfloat16"))
    assert model.gpt_neox.layers[0].mlp.dense_4h_to_h.weight.dtype == torch.bfloat16
    (row,) = rows(tables["spectra"], layer=0, matrix="dense_4h_to_h", tensor="weight")
    assert_sv_close(row["sv"], w)
    assert np.isfinite(tables["activation_stats"].column("rms").to_numpy()).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_pass_matches_cpu_pass():
    cpu, _ = extract_from_model(neox(), REF, SHA, PROBE, ExtractOptions(gradients=True))
    gpu, _ = extract_from_model(neox(), REF, SHA, PROBE, ExtractOptions(gradients=True, device="cuda"))
    for name in ("activation_stats", "spectra"):
        for a, b in zip(cpu[name].to_pylist(), gpu[name].to_pylist(), strict=True):
            np.testing.assert_allclose(
                b["sv"], a["sv"], rtol=1e-4, atol=1e-6 * max(max(a["sv"], default=0), 1)
            )
    (cpu_g,) = rows(cpu["sketches"], layer=1, site="mlp_out", head=None, estimator="debiased")
    (gpu_g,) = rows(gpu["sketches"], layer=1, site="mlp_out", head=None, estimator="debiased")
    assert float(np.dot(cpu_g["gram"], gpu_g["gram"]) / (cpu_g["gram_norm"] * gpu_g["gram_norm"])) > 1 - 1e-6


def np_gini(m: np.ndarray) -> float:
    """Gini from its definition, the mean absolute difference over twice the mean (no sorting)."""
    x = np.abs(m.ravel())
    return float(np.abs(x[:, None] - x[None, :]).sum() / (2 * x.size**2 * x.mean()))


def np_hoyer(m: np.ndarray) -> float:
    x = np.abs(m.ravel())
    return float((np.sqrt(x.size) - x.sum() / np.sqrt((x**2).sum())) / (np.sqrt(x.size) - 1))


def test_matrix_stats_are_pico_analyzes_gini_hoyer_and_inf_norm_of_every_matrix():
    model = neox(n_heads=2, seed=5)
    ids = torch.tensor(TOKENS)
    model.zero_grad()
    model(ids, labels=ids).loss.backward()  # the gradient extraction takes (see the spectra test above)
    p = "gpt_neox.layers.1."
    grads = {k: q.grad.double().numpy().copy() for k, q in model.named_parameters() if k.startswith(p)}
    weights = {k: q.detach().double().numpy().copy() for k, q in model.named_parameters() if k.startswith(p)}
    model.zero_grad(set_to_none=True)
    tables, _ = extract_from_model(model, REF, SHA, PROBE, ExtractOptions(gradients=True, batch_size=4))
    stats = {(r["layer"], r["tensor"], r["matrix"], r["head"]): r for r in tables["matrix_stats"].to_pylist()}
    spectra = {(r["layer"], r["tensor"], r["matrix"], r["head"]) for r in tables["spectra"].to_pylist()}
    assert set(stats) == {k for k in spectra if k[3] is None}  # every matrix, and OV per layer
    for tensor, values in (("weight", weights), ("grad", grads)):
        for matrix, name in (("dense_h_to_4h", "mlp.dense_h_to_4h"), ("dense", "attention.dense")):
            w = values[p + name + ".weight"]
            row = stats[(1, tensor, matrix, None)]
            assert (row["rows"], row["cols"]) == w.shape
            assert row["gini"] == pytest.approx(np_gini(w), rel=1e-6)
            assert row["hoyer"] == pytest.approx(np_hoyer(w), rel=1e-6)
            assert row["inf_norm"] == pytest.approx(np.abs(w).max(), rel=1e-6)
    w_v = weights[p + "attention.query_key_value.weight"].reshape(2, 3, 6, 12)[:, 2].reshape(12, 12)  # true V
    ov = weights[p + "attention.dense.weight"] @ w_v
    assert stats[(1, "weight", "ov", None)]["gini"] == pytest.approx(np_gini(ov), rel=1e-6)
    assert stats[(1, "grad", "ov", None)]["probe_id"] == PROBE.probe_id


def test_weight_spectra_of_repeated_weights_come_from_the_cache_and_equal_a_fresh_pass():
    from layerlake.etl.extract import WeightSpectraCache
    from layerlake.etl.sources import weights_sha256

    cache = WeightSpectraCache(kept=1)
    first, second, other = neox(seed=0), neox(seed=0), neox(seed=1)
    digest = weights_sha256(first)
    assert weights_sha256(second) == digest != weights_sha256(other)
    fresh, _ = extract_from_model(first, REF, digest, PROBE, ExtractOptions(), cache)
    assert cache.hits == 0
    reused, _ = extract_from_model(second, REF, digest, PROBE, ExtractOptions(), cache)
    assert cache.hits == 1
    for table in ("spectra", "matrix_stats"):
        assert reused[table].equals(fresh[table]), table
    extract_from_model(other, REF, weights_sha256(other), PROBE, ExtractOptions(), cache)
    assert cache.hits == 1  # other weights: computed, and the first evicted (kept=1)
    extract_from_model(second, REF, digest, PROBE, ExtractOptions(), cache)
    assert cache.hits == 1
    # other options that shape the spectra are another entry: the per-head rows are not reused
    extract_from_model(second, REF, digest, PROBE, ExtractOptions(per_head=False), cache)
    assert cache.hits == 1


def test_gradient_spectra_are_never_taken_from_the_cache():
    from layerlake.etl.extract import WeightSpectraCache

    cache = WeightSpectraCache()
    options = ExtractOptions(gradients=True)
    a, _ = extract_from_model(neox(), REF, SHA, PROBE, options, cache)
    shifted = tuple(tuple((t + 1) % 40 for t in row) for row in TOKENS)
    probe = ProbeBatch("probe-2", "test", shifted, PROBE.positions, "sample")
    b, _ = extract_from_model(neox(), REF, SHA, probe, options, cache)
    assert cache.hits == 1  # the weights' spectra only
    grads = [rows(t["spectra"], tensor="grad", layer=0, matrix="dense")[0]["sv"] for t in (a, b)]
    assert not np.allclose(grads[0], grads[1])  # another probe, another gradient


def test_float32_spectra_precision_is_an_option_that_changes_the_config_hash():
    model = neox()
    w = model.gpt_neox.layers[1].attention.dense.weight.detach().double().numpy()
    single = ExtractOptions(spectra_precision="float32")
    tables, _ = extract_from_model(model, REF, SHA, PROBE, single)
    (row,) = rows(tables["spectra"], layer=1, matrix="dense", tensor="weight")
    assert_sv_close(row["sv"], w, rel=1e-6)
    assert ExtractOptions().config_hash() == ExtractOptions(spectra_precision="float64").config_hash()
    assert single.config_hash() != ExtractOptions().config_hash()
    with pytest.raises(ConfigError, match="extract.spectra_precision 'float16' is not one of"):
        ExtractOptions(spectra_precision="float16")


def test_timings_name_every_phase_of_the_pass():
    from layerlake.etl.extract import PHASES

    _, timings = extract_from_model(neox(), REF, SHA, PROBE, ExtractOptions(gradients=True))
    assert set(timings) == set(PHASES)
    assert all(timings[p] > 0 for p in PHASES)


def test_a_checkpoint_with_a_nan_weight_fails_naming_the_matrix_not_with_a_bare_svd_error():
    model = neox()
    with torch.no_grad():
        model.gpt_neox.layers[1].mlp.dense_4h_to_h.weight[2, 3] = float("nan")
    with pytest.raises(
        ExtractionError, match=r"weights of gpt_neox.layers.1.mlp.dense_4h_to_h.weight hold NaN or infinite"
    ) as caught:
        extract_from_model(model, REF, SHA, PROBE, ExtractOptions())
    assert "steps.only" in caught.value.fix


@pytest.mark.parametrize("gradients", [True, False])
@pytest.mark.parametrize(
    "parameter", ["gpt_neox.layers.0.input_layernorm.weight", "gpt_neox.embed_in.weight", "lm_head.weight"]
)
def test_a_nan_outside_the_matrices_with_spectra_is_named_not_blamed_on_the_attention(parameter, gradients):
    # a NaN LayerNorm or embedding makes every activation NaN: the error must name the parameter, not
    # fail in an SVD without a name or blame the attention's recomputed probabilities
    model = neox()
    with torch.no_grad():
        model.get_parameter(parameter).view(-1)[0] = float("inf")
    with pytest.raises(ExtractionError, match=rf"weights of {parameter} hold NaN or infinite values"):
        extract_from_model(model, REF, SHA, PROBE, ExtractOptions(gradients=gradients))


def test_activations_that_overflow_from_finite_weights_are_named(tmp_path):
    model = neox()
    with torch.no_grad():  # finite, but the MLP's output overflows float32 at every position
        model.gpt_neox.layers[1].mlp.dense_4h_to_h.weight.fill_(3e38)
    with pytest.raises(
        ExtractionError, match=r"activations at layer 1's mlp_out hold NaN or infinite values"
    ):
        extract_from_model(model, REF, SHA, PROBE, ExtractOptions(gradients=False))
    model = neox()
    with torch.no_grad():  # the attention's values overflow: its gradient pass names that, not the attention
        model.gpt_neox.layers[0].attention.query_key_value.weight.fill_(3e38)
    with pytest.raises(ExtractionError, match=r"layer \d's attention output holds NaN or infinite values"):
        extract_from_model(model, REF, SHA, PROBE, ExtractOptions(gradients=True))


def test_an_all_zero_matrix_and_its_zero_gradient_are_stored(tmp_path):
    # a zero-initialised output projection: Hoyer sparsity is undefined (NULL), every other number stands
    model = neox()
    with torch.no_grad():
        model.gpt_neox.layers[1].attention.dense.weight.zero_()
    tables, _ = extract_from_model(model, REF, SHA, PROBE, ExtractOptions(gradients=True))
    Warehouse(tmp_path).commit("t", "tiny", "m", tables, {}, run_id="r")  # the contract takes the rows
    stats = {(r["tensor"], r["matrix"]): r for r in rows(tables["matrix_stats"], layer=1)}
    zero = stats[("weight", "dense")]
    assert zero["hoyer"] is None and zero["gini"] == 0.0 and zero["inf_norm"] == 0.0
    assert stats[("grad", "query_key_value")]["hoyer"] is None  # nothing flows back through a zero W_O
    assert stats[("weight", "query_key_value")]["hoyer"] is not None
    (spectrum,) = rows(tables["spectra"], layer=1, matrix="dense", tensor="weight", head=None)
    assert list(spectrum["sv"]) == [0.0] * len(spectrum["sv"])
