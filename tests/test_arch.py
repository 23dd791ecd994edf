"""Architecture details beyond the matrix (tests/test_arch_matrix.py): Qwen2's per-layer
settings, pruning, and unsupported architectures refused with the list of supported types before
any weight is read."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from blockexp.expanders import LlamaPro, SLayer
from blockexp.io.load import load_model
from blockexp.layers import UnsupportedArchitectureError, get_arch, supported_model_types
from tests.conftest import ARCH_CONFIGS, make_arch_model, tiny_llama_dict


def test_supported_model_types():
    assert {"llama", "mistral", "qwen2"} <= set(supported_model_types())
    assert get_arch(ARCH_CONFIGS["qwen2"]["model_type"]).layer_count_boundaries == (
        "max_window_layers",
    )


def test_qwen2_per_layer_settings_follow_the_plan(tmp_path):
    base = make_arch_model("qwen2")
    assert base.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    model = copy.deepcopy(base)
    LlamaPro(num_groups=2).expand(model)  # new copies of layer 1 (full) and 3 (sliding)
    full, sliding = "full_attention", "sliding_attention"
    assert model.config.layer_types == [full, full, full, sliding, sliding, sliding]
    assert model.config.max_window_layers == 3
    layers = get_arch(model).layers(model)
    # Each attention module keeps the window its config entry says.
    for layer, kind in zip(layers, model.config.layer_types, strict=True):
        assert (layer.self_attn.sliding_window is not None) == (kind == sliding)
    # The saved config rebuilds exactly the same model.
    model.save_pretrained(tmp_path / "qwen2")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "qwen2").eval()
    assert reloaded.config.layer_types == model.config.layer_types
    assert reloaded.config.max_window_layers == 3
    ids = torch.randint(0, 256, (2, 14), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert (reloaded(ids).logits - base(ids).logits).abs().max() <= 1e-4


def test_qwen2_slayer_pruning_keeps_config_consistent():
    model = load_model(
        tiny_llama_dict(
            8, model_type="qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=6
        ),
        dtype="float32",
    )
    SLayer(num_deleted=2).expand(model)  # after 1, 3 (means); 6, 7 deleted, 5 <- mean(5, 6, 7)
    assert model.config.num_hidden_layers == 8
    assert model.config.layer_types == ["full_attention"] * 8
    assert model.config.max_window_layers == 8
    ids = torch.randint(0, 256, (1, 10))
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


def test_unsupported_architecture_lists_supported_ones():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50))
    for expander in (LlamaPro(num_groups=1), SLayer(num_deleted=0)):
        with pytest.raises(UnsupportedArchitectureError) as err:
            expander.expand(model)
        message = str(err.value)
        assert "Unsupported architecture 'gpt2'" in message
        assert ", ".join(supported_model_types()) in message and "register_arch" in message


@pytest.mark.parametrize("in_memory", [False, True])
def test_unsupported_architecture_is_refused_before_any_weight_is_read(tmp_path, in_memory, capsys):
    """A GPT-2 directory whose weights file is garbage: the refusal names the architecture (not
    the unreadable weights), for streaming and in-memory expansion alike, and writes nothing."""
    from transformers import GPT2Config

    from blockexp.cli import main

    base = tmp_path / "gpt2"
    GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50).save_pretrained(base)
    (base / "model.safetensors").write_bytes(b"not a safetensors file")
    args = ["expand", "--base", str(base), "--out", str(tmp_path / "out")]
    args += ["--expander", "LlamaPro", "--expander.num_groups", "1"]
    with pytest.raises(SystemExit):
        main(args + (["--in_memory", "true"] if in_memory else []))
    err = capsys.readouterr().err
    assert "error: Unsupported architecture 'gpt2'" in err, err
    assert ", ".join(supported_model_types()) in err
    assert not (tmp_path / "out").exists()
