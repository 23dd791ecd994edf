"""MoE expansion: identity for any router, structure and gates, argument errors, its own export
format."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from blockexp.expanders import ExpanderConfigError, MoEExpansion
from blockexp.expanders.moe import load_moe_model
from blockexp.layers import get_arch
from blockexp.layers.moe import MOE_WEIGHTS_NAME, MoEFeedForward
from tests.conftest import random_ids


def test_moe_is_identity_for_any_router_weights(tiny_llama):
    base = tiny_llama(3)
    model = copy.deepcopy(base)
    MoEExpansion(num_experts=3, top_k=1).expand(model)
    with torch.no_grad():
        for layer in get_arch(model).layers(model):
            layer.mlp.router.weight.normal_(std=10.0)  # routing is arbitrary, output unchanged
        assert (model(random_ids()).logits - base(random_ids()).logits).abs().max() <= 1e-5


def test_moe_structure_and_gates(tiny_llama):
    base = tiny_llama(2)
    model = copy.deepcopy(base)
    expansion = MoEExpansion(num_experts=2, top_k=2, seed=3).expand(model)
    arch = get_arch(model)
    for layer, base_layer in zip(arch.layers(model), arch.layers(base), strict=True):
        ffn = arch.mlp(layer)
        assert isinstance(ffn, MoEFeedForward) and len(ffn.experts) == 2
        assert torch.equal(ffn.original.down_proj.weight, base_layer.mlp.down_proj.weight)
        for expert in ffn.experts:
            assert torch.count_nonzero(expert.down_proj.weight) == 0
            assert torch.equal(expert.up_proj.weight, base_layer.mlp.up_proj.weight)
            assert expert.up_proj.weight.data_ptr() != ffn.original.up_proj.weight.data_ptr()
        gates = ffn.gates(torch.randn(5, 7, 32))
        assert gates.shape == (5, 7, 3)
        assert ((gates > 0).sum(-1) == 2).all()  # top_k of the 3 slots kept
        assert (gates.sum(-1) <= 1 + 1e-6).all()
    assert not any(n.startswith("model.layers.0.mlp.original.") for n in expansion.trainable)
    assert expansion.extra == {"num_experts": 2, "top_k": 2, "layers": None}
    # The router initialisation is seeded.
    again = MoEExpansion(num_experts=2, top_k=2, seed=3).expand(copy.deepcopy(base)).model
    assert torch.equal(
        again.model.layers[1].mlp.router.weight, model.model.layers[1].mlp.router.weight
    )


def test_moe_refuses_bad_arguments_and_double_application(tiny_llama):
    with pytest.raises(ExpanderConfigError, match="num_experts must be >= 1"):
        MoEExpansion(num_experts=0)
    with pytest.raises(ExpanderConfigError, match="top_k must be between 1 and num_experts"):
        MoEExpansion(num_experts=1, top_k=3)
    model = tiny_llama(2)
    MoEExpansion().expand(model)
    with pytest.raises(ExpanderConfigError, match="already MoE-expanded"):
        MoEExpansion().expand(model)


def test_moe_export_is_refused_by_plain_transformers(tiny_llama, tmp_path):
    model = tiny_llama(2)
    expander = MoEExpansion(num_experts=1)
    expander.expand(model)
    expander.export_model(model).save_pretrained(tmp_path / "moe")
    assert (tmp_path / "moe" / MOE_WEIGHTS_NAME).is_file()
    assert "load_moe_model" in (tmp_path / "moe" / "README.md").read_text()
    config = json.loads((tmp_path / "moe" / "config.json").read_text())
    assert config["blockexp_moe"]["init_args"]["num_experts"] == 1
    with pytest.raises(OSError):  # no model.safetensors: never a silent half-load
        AutoModelForCausalLM.from_pretrained(tmp_path / "moe")
    with pytest.raises(FileNotFoundError, match="not an exported MoEExpansion"):
        load_moe_model(tmp_path)
    reloaded = load_moe_model(tmp_path / "moe")
    with torch.no_grad():
        assert torch.equal(reloaded(random_ids()).logits, model(random_ids()).logits)


def test_moe_on_chosen_layers_only(tiny_llama, tmp_path):
    """``layers`` expands only those blocks (a smaller budget); identity, training set and the
    export round trip hold as for every block."""
    base = tiny_llama(3)
    model = copy.deepcopy(base)
    expander = MoEExpansion(num_experts=1, layers=[2, 0, 2])
    expansion = expander.expand(model)
    assert expander.layers == [0, 2] and expansion.extra["layers"] == [0, 2]
    kinds = [isinstance(layer.mlp, MoEFeedForward) for layer in get_arch(model).layers(model)]
    assert kinds == [True, False, True]
    assert {n.split(".")[2] for n in expansion.trainable} == {"0", "2"}
    with torch.no_grad():
        for i in (0, 2):
            model.model.layers[i].mlp.experts[0].down_proj.weight.normal_()
    expander.export_model(model).save_pretrained(tmp_path / "moe")
    reloaded = load_moe_model(tmp_path / "moe")
    with torch.no_grad():
        assert torch.equal(reloaded(random_ids()).logits, model(random_ids()).logits)
    with pytest.raises(ExpanderConfigError, match=r"layers \[3\] are out of range .* 0..2"):
        MoEExpansion(layers=[1, 3]).expand(copy.deepcopy(base))
    with pytest.raises(ExpanderConfigError, match="layers is empty"):
        MoEExpansion(layers=[])
