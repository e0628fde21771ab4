"""`layerlake extract` on local checkpoints of a model that is not a Hugging Face one: a state dict per step,
the model's constructor named in the suite config (checked when composed), and a layout."""

from __future__ import annotations

import nanogpt
import numpy as np
import pytest
import torch
from conftest import compose_settings
from safetensors.torch import save_model

from layerlake import warehouse
from layerlake.core.errors import ConfigError
from layerlake.etl.driver import run_extract
from layerlake.etl.errors import ExtractionError
from layerlake.etl.suite.corpus import save_tokenizer, train_text, train_tokenizer

KWARGS = "{n_layer:2,n_head:4,n_embd:16,vocab_size:320,block_size:64}"
MODEL = (
    "suite.models=[{name:gpt-s,n_layers:2,d_model:16,n_heads:4,layout:nanogpt,"
    f"constructor:{{target:'nanogpt:GPT',kwargs:{KWARGS}}}}}]"
)
OVERRIDES = (MODEL, "suite.name=mine", "suite.steps=[0,8]", "extract.gradients=true", "probe.seq_len=16")


def save_sharded(model, folder) -> None:
    """The state dict as safetensors shards and their index (huggingface_hub's ``save_torch_state_dict``)."""
    from huggingface_hub import save_torch_state_dict

    save_torch_state_dict(model.state_dict(), folder, max_shard_size="8KB")
    assert len(list(folder.glob("model-*-of-*.safetensors"))) >= 2


def make_suite(root, steps=(0, 8), save=save_model):
    """<root>/suites/mine/gpt-s/step<N>/ holding each step's state dict, and the suite's tokenizer."""
    folder = root / "suites" / "mine"
    folder.mkdir(parents=True)
    save_tokenizer(train_tokenizer(train_text()[:20000], 320), folder / "tokenizer.json")
    models = {}
    for step in steps:
        model = nanogpt.gpt(seed=step, n_layer=2, n_head=4, n_embd=16, vocab_size=320, block_size=64)
        (folder / "gpt-s" / f"step{step}").mkdir(parents=True)
        if save is save_model:
            save_model(model, str(folder / "gpt-s" / f"step{step}" / "model.safetensors"))
        elif save is save_sharded:
            save_sharded(model, folder / "gpt-s" / f"step{step}")
        else:
            torch.save(model.state_dict(), folder / "gpt-s" / f"step{step}" / "model.pt")
        models[step] = model
    return models


SAVES = {"safetensors": save_model, "sharded safetensors": save_sharded, "torch.save": torch.save}


@pytest.mark.parametrize("save", sorted(SAVES))
def test_extract_reads_state_dicts_through_a_constructor_and_a_layout(tmp_path, save):
    models = make_suite(tmp_path, save=SAVES[save])
    settings = compose_settings(tmp_path, *OVERRIDES)
    report = run_extract(settings)
    assert report.ok, report.failed
    con = warehouse.connect(settings.paths.warehouse)
    try:
        (arch, n_layers, d_head, config_json) = con.sql(
            "select distinct architecture, n_layers, d_head, config_json from checkpoints"
        ).fetchall()[0]
        assert (arch, n_layers, d_head) == ("nanogpt", 2, 4) and '"n_embd": 16' in config_json
        spectra = con.sql(
            "select step, sv from spectra where tensor = 'weight' and matrix = 'dense_h_to_4h' and layer = 1"
        ).fetchall()
        for step, sv in spectra:  # the loaded weights, not the constructor's random ones
            w = models[step].transformer.h[1].mlp.c_fc.weight.detach().double().numpy()
            np.testing.assert_allclose(sv, np.linalg.svd(w, compute_uv=False), rtol=1e-10, atol=1e-12)
        grads = {
            m for (m,) in con.sql("select distinct matrix from spectra where tensor = 'grad'").fetchall()
        }
        assert {"ov", "ov_product_rule", "dense"} <= grads
    finally:
        con.close()


def test_a_constructor_is_checked_when_the_config_is_composed(tmp_path):
    bad_target = MODEL.replace("nanogpt:GPT", "nanogpt:NoSuchModel")
    with pytest.raises(ConfigError, match="nanogpt has no 'NoSuchModel'"):
        compose_settings(tmp_path, bad_target, "suite.name=mine")
    with pytest.raises(ConfigError, match="cannot import no_such_package"):
        compose_settings(
            tmp_path, MODEL.replace("nanogpt:GPT", "no_such_package.model:GPT"), "suite.name=mine"
        )
    bad_kwargs = MODEL.replace("n_layer:2", "layers:2").replace("nanogpt:GPT", "nanogpt:GPTConfig")
    with pytest.raises(ConfigError, match=r"kwargs do not fit nanogpt:GPTConfig: got an unexpected keyword"):
        compose_settings(tmp_path, bad_kwargs, "suite.name=mine")
    no_layout = MODEL.replace("layout:nanogpt,", "")
    with pytest.raises(ConfigError, match="has a constructor but no layout"):
        compose_settings(tmp_path, no_layout, "suite.name=mine")
    with pytest.raises(ConfigError, match="layout 'nanogtp' is neither a preset nor a YAML file"):
        compose_settings(tmp_path, MODEL.replace("layout:nanogpt", "layout:nanogtp"), "suite.name=mine")


def test_a_layout_that_does_not_fit_fails_before_any_task_runs(tmp_path):
    make_suite(tmp_path, steps=(0,))
    settings = compose_settings(tmp_path, MODEL.replace("layout:nanogpt", "layout:litgpt"), "suite.name=mine",
                                "suite.steps=[0]")  # fmt: skip
    with pytest.raises(ExtractionError, match=r"gpt-s \(mine/gpt-s/step0\): layout 'litgpt' on GPT: value"):
        run_extract(settings)
    assert not list((tmp_path / "warehouse").rglob("*.parquet"))


def test_a_state_dict_that_does_not_fit_the_constructors_model_names_the_tensor(tmp_path):
    # a tensor of another shape, or integers for a float weight (a torch.save, or a header that lies),
    # was a first line of torch's error without the shapes, or loaded as integers cast to float
    import json

    make_suite(tmp_path, steps=(0, 8, 16), save=torch.save)
    folder = tmp_path / "suites" / "mine" / "gpt-s"
    fc = "transformer.h.1.mlp.c_fc.weight"  # [64, 16]
    state = torch.load(folder / "step8" / "model.pt", weights_only=True)
    torch.save({**state, fc: state[fc].to(torch.int32)}, folder / "step8" / "model.pt")
    model = nanogpt.gpt(seed=16, n_layer=2, n_head=4, n_embd=16, vocab_size=320, block_size=64)
    (folder / "step16" / "model.pt").unlink()
    save_model(model, str(folder / "step16" / "model.safetensors"))
    weights = folder / "step16" / "model.safetensors"
    data = weights.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    header[fc]["shape"] = [16, 64]  # transposed: the same bytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    weights.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + size :])
    settings = compose_settings(tmp_path, *OVERRIDES, "suite.steps=[0,8,16]")
    report = run_extract(settings)
    failed = dict(report.failed)
    assert len(report.committed) == 1 and set(failed) == {"gpt-s step8", "gpt-s step16"}
    assert f"{fc} (int32; the model holds float32)" in failed["gpt-s step8"]
    assert f"{fc} is [16, 64] in the file, [64, 16] in the model" in failed["gpt-s step16"]
    assert "suite.models[gpt-s].constructor.kwargs" in failed["gpt-s step16"]
