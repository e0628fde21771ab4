"""Contract-valid rows for tests and benchmarks: one checkpoint's tables from numpy arrays.

Not used by the pipeline. Builds what an extraction task would commit (``checkpoints``, ``sketches``,
``spectra``, ``activation_stats``) so warehouse code can be exercised without torch.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from layerlake.warehouse import schema
from layerlake.warehouse.gram import pack

TOKENS_PER_STEP = 2_097_152  # Pythia: 1024 sequences x 2048 tokens


def centred_gram(x: np.ndarray, estimator: str = "biased") -> np.ndarray:
    """The centred Gram of activations ``x`` (n x d).

    biased:   H K H with K = X X^T, H = I - 11^T / n;
    debiased: the U-centred K (Szekely & Rizzo 2014): zero diagonal, then
              U_ij = K_ij - r_i/(n-2) - r_j/(n-2) + S/((n-1)(n-2)) off the diagonal, r = row sums, S = total.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    k = x @ x.T
    if estimator == "biased":
        h = np.eye(n) - 1.0 / n
        return h @ k @ h
    k = k.copy()
    np.fill_diagonal(k, 0.0)
    r = k.sum(axis=1)
    u = k - r[:, None] / (n - 2) - r[None, :] / (n - 2) + k.sum() / ((n - 1) * (n - 2))
    np.fill_diagonal(u, 0.0)
    return u


def weights_hash(model: str, step: int) -> str:
    return hashlib.sha256(f"{model}@{step}".encode()).hexdigest()


def checkpoint_tables(
    model: str,
    step: int,
    grams: dict[tuple[int, str], np.ndarray],
    spectra: dict[tuple[int, str], np.ndarray],
    d: int,
    probe_id: str = "probe0",
    weights_sha256: str | None = None,
) -> dict[str, pa.Table]:
    """Tables for one checkpoint: ``grams[(layer, site)]`` (n x n) and ``spectra[(layer, matrix)]`` (sv)."""
    sha = weights_sha256 or weights_hash(model, step)
    n_layers = 1 + max([k[0] for k in grams] + [k[0] for k in spectra] + [0])
    checkpoints = {
        "revision": [f"step{step}"], "step": [step], "tokens_seen": [step * TOKENS_PER_STEP], "source": ["local"],
        "location": [f"/synthetic/{model}/step{step}"], "weights_sha256": [sha], "n_params": [0],
        "architecture": ["gpt_neox"], "n_layers": [n_layers], "d_model": [d], "n_heads": [1], "d_head": [d],
        "config_json": ["{}"], "probe_id": [probe_id], "task_id": [f"{model}-{step}"],
    }  # fmt: skip
    keys = sorted(grams)
    flat = [pack(np.asarray(grams[k], dtype=np.float32)) for k in keys]  # stored form: warehouse.gram
    sketches = {
        "step": [step] * len(keys), "weights_sha256": [sha] * len(keys), "layer": [k[0] for k in keys],
        "site": [k[1] for k in keys], "head": [None] * len(keys), "probe_id": [probe_id] * len(keys),
        "kernel": ["linear"] * len(keys), "estimator": ["biased"] * len(keys),
        "n": [int(np.asarray(grams[k]).shape[0]) for k in keys], "d": [d] * len(keys),
        "gram": pa.array(flat, type=pa.list_(pa.float32())),
        "gram_norm": [float(np.sqrt(np.dot(f.astype(np.float64), f.astype(np.float64)))) for f in flat],
    }  # fmt: skip
    skeys = sorted(spectra)
    spec = {
        "step": [step] * len(skeys), "weights_sha256": [sha] * len(skeys), "layer": [k[0] for k in skeys],
        "tensor": ["weight"] * len(skeys), "matrix": [k[1] for k in skeys], "head": [None] * len(skeys),
        "rows": [d] * len(skeys), "cols": [d] * len(skeys),
        "sv": [np.asarray(spectra[k], dtype=np.float64).tolist() for k in skeys],
        "eps": [float(np.finfo(np.float64).eps)] * len(skeys), "probe_id": [None] * len(skeys),
    }  # fmt: skip
    return {
        "checkpoints": pa.table(checkpoints, schema=schema.CHECKPOINTS.arrow_schema()),
        "sketches": pa.table(sketches, schema=schema.SKETCHES.arrow_schema()),
        "spectra": pa.table(spec, schema=schema.SPECTRA.arrow_schema()),
    }
