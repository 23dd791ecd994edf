"""Architectures: Llama, Mistral and Qwen2 under every depth-changing expander; unsupported ones
fail with a list of the supported model types."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from blockexp.checkpoint import load_model
from blockexp.expanders import LlamaPro, SLayer
from blockexp.layers import UnsupportedArchitectureError, get_arch, supported_model_types
from tests.conftest import ARCH_CONFIGS, make_arch_model, tiny_llama_dict

EXPANDERS = {
    "LlamaPro": lambda: LlamaPro(num_groups=2),
    "SLayer-d0": lambda: SLayer(num_deleted=0),
    "SLayer-d0-copy": lambda: SLayer(num_deleted=0, init="copy", fraction=1.0, num_segments=2),
}


def test_supported_model_types():
    assert {"llama", "mistral", "qwen2"} <= set(supported_model_types())
    assert get_arch(ARCH_CONFIGS["qwen2"]["model_type"]).layer_count_boundaries == (
        "max_window_layers",
    )


@pytest.mark.parametrize("expander_name", sorted(EXPANDERS))
def test_identity_and_cached_generation(model_type, expander_name):
    base = make_arch_model(model_type)
    model = copy.deepcopy(base)
    expander = EXPANDERS[expander_name]()
    assert expander.is_identity()
    expansion = expander.expand(model)
    assert model.config.num_hidden_layers == expansion.plan.num_layers > 4
    assert len(get_arch(model).layers(model)) == model.config.num_hidden_layers
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (base(ids).logits - model(ids).logits).abs().max() <= 1e-4
        kwargs = dict(
            max_new_tokens=10,
            do_sample=False,
            use_cache=True,
            attention_mask=torch.ones_like(ids[:, :6]),
            pad_token_id=256,
        )
        assert torch.equal(
            base.generate(ids[:, :6], **kwargs), model.generate(ids[:, :6], **kwargs)
        )
        out = model(ids, use_cache=True)
    assert len(out.past_key_values.layers) == model.config.num_hidden_layers


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
        assert "llama, mistral, qwen2" in message and "register_arch" in message
