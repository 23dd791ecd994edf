"""Surgery, function preservation and freezing of LLaMA Pro on tiny random Llama models."""

from __future__ import annotations

import copy

import pytest
import torch

from blockexp.expanders import (
    LlamaPro,
    build_expander,
    expander_names,
    get_expander,
    register_expander,
)
from blockexp.expanders.base import Expander
from blockexp.layers import UnsupportedArchitectureError, get_arch


@pytest.mark.parametrize(
    "num_layers,groups,per_group", [(4, 2, 1), (4, 1, 2), (6, 3, 2), (4, 4, 1)]
)
def test_expanded_logits_equal_base(tiny_llama, num_layers, groups, per_group):
    base = tiny_llama(num_layers)
    expanded = copy.deepcopy(base)
    expansion = LlamaPro(num_groups=groups, blocks_per_group=per_group).expand(expanded)
    assert expanded.config.num_hidden_layers == num_layers + groups * per_group
    assert len(get_arch(expanded).layers(expanded)) == expanded.config.num_hidden_layers
    ids = torch.randint(0, 256, (3, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (base(ids).logits - expanded(ids).logits).abs().max().item()
    assert diff <= 1e-5
    assert expansion.plan.num_layers == expanded.config.num_hidden_layers


def test_generate_with_kv_cache_matches_base(tiny_llama):
    base = tiny_llama(4)
    expanded = copy.deepcopy(base)
    LlamaPro(num_groups=2, blocks_per_group=2).expand(expanded)
    prompt = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(2))
    kwargs = dict(
        max_new_tokens=12,
        do_sample=False,
        use_cache=True,
        attention_mask=torch.ones_like(prompt),
        pad_token_id=256,
    )
    with torch.no_grad():
        want = base.generate(prompt, **kwargs)
        got = expanded.generate(prompt, **kwargs)
    assert torch.equal(want, got)
    # The KV cache really was used for every layer of the expanded model.
    out = expanded(prompt, use_cache=True)
    assert len(out.past_key_values.layers) == expanded.config.num_hidden_layers


def test_surgery_details(tiny_llama):
    base = tiny_llama(4)
    model = copy.deepcopy(base)
    LlamaPro(num_groups=2).expand(model)
    arch = get_arch(model)
    layers = arch.layers(model)
    base_layers = arch.layers(base)
    # New layers: weights equal to their source except zeroed residual writers; layer_idx renumbered.
    for new_idx, src in ((2, 1), (5, 3)):
        new, orig = layers[new_idx], base_layers[src]
        assert torch.count_nonzero(new.self_attn.o_proj.weight) == 0
        assert torch.count_nonzero(new.mlp.down_proj.weight) == 0
        assert torch.equal(new.self_attn.q_proj.weight, orig.self_attn.q_proj.weight)
        assert torch.equal(new.mlp.gate_proj.weight, orig.mlp.gate_proj.weight)
        assert torch.equal(new.input_layernorm.weight, orig.input_layernorm.weight)
        assert (
            new.self_attn.q_proj.weight.data_ptr()
            != layers[new_idx - 1].self_attn.q_proj.weight.data_ptr()
        )
    assert [layer.self_attn.layer_idx for layer in layers] == list(range(6))


def test_biases_of_residual_writers_are_zeroed(tiny_llama):
    base = tiny_llama(2, attention_bias=True, mlp_bias=True)
    with torch.no_grad():
        for layer in get_arch(base).layers(base):
            layer.self_attn.o_proj.bias.normal_()
            layer.mlp.down_proj.bias.normal_()
    model = copy.deepcopy(base)
    LlamaPro(num_groups=1).expand(model)
    new = get_arch(model).layers(model)[2]
    assert torch.count_nonzero(new.self_attn.o_proj.bias) == 0
    assert torch.count_nonzero(new.mlp.down_proj.bias) == 0
    ids = torch.randint(0, 256, (2, 9))
    with torch.no_grad():
        assert (base(ids).logits - model(ids).logits).abs().max() <= 1e-5


def test_trainable_set_comes_from_plan(tiny_llama):
    model = tiny_llama(4)
    expansion = LlamaPro(num_groups=2).expand(model)
    expansion.freeze()
    layer_of = lambda name: int(name.split(".")[2])  # noqa: E731  (test-only parse)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(expansion.trainable)
    assert {layer_of(n) for n in trainable} == {2, 5}
    per_layer = sum(p.numel() for p in get_arch(model).layers(model)[2].parameters())
    assert expansion.parameter_counts()[1] == 2 * per_layer


@pytest.mark.parametrize("tie", [False, True])
def test_train_options_add_embeddings_head_norms(tiny_llama, tie):
    model = tiny_llama(4, tie_word_embeddings=tie)
    exp = LlamaPro(
        num_groups=2, train_embeddings=True, train_lm_head=True, train_norms=True
    ).expand(model)
    names = exp.trainable
    assert "model.embed_tokens.weight" in names
    assert ("lm_head.weight" in names) == (not tie)  # tied: one tensor, listed once
    assert "model.norm.weight" in names
    assert "model.layers.0.input_layernorm.weight" in names
    assert "model.layers.0.self_attn.q_proj.weight" not in names
    only_head = LlamaPro(num_groups=2, train_lm_head=True).expand(tiny_llama(4))
    assert "model.embed_tokens.weight" not in only_head.trainable


def test_unknown_architecture_is_a_clear_error():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(
        UnsupportedArchitectureError, match="Unsupported architecture 'gpt2'.*llama"
    ):
        LlamaPro(num_groups=1).expand(model)


def test_registry_refuses_duplicates_and_unknown_names():
    assert "LlamaPro" in expander_names()
    assert get_expander("LlamaPro") is LlamaPro
    with pytest.raises(KeyError, match="Unknown expander 'Nope'"):
        get_expander("Nope")
    with pytest.raises(ValueError, match="already registered"):
        register_expander(type("LlamaPro", (Expander,), {}))
    with pytest.raises(TypeError):
        register_expander(int)
    rebuilt = build_expander(LlamaPro(num_groups=4, blocks_per_group=2).config())
    assert (
        isinstance(rebuilt, LlamaPro) and rebuilt.num_groups == 4 and rebuilt.blocks_per_group == 2
    )


def test_meta_device_expansion_counts_parameters():
    from transformers import AutoModelForCausalLM

    from blockexp.io.load import load_config
    from tests.conftest import tiny_llama_dict

    config = load_config(tiny_llama_dict(4))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total_before = sum(p.numel() for p in model.parameters())
    exp = LlamaPro(num_groups=2).expand(model)
    total, trainable = exp.parameter_counts()
    per_layer = sum(p.numel() for p in get_arch(model).layers(model)[0].parameters())
    assert total == total_before + 2 * per_layer and trainable == 2 * per_layer
