"""Prefix and suffix stacking (LLaMA Pro Table 7): layer maps, KV slots and argument errors."""

from __future__ import annotations

import pytest
import torch

from blockexp.expanders import ExpanderConfigError, PrefixStack, SuffixStack
from blockexp.layers import get_arch


def test_stack_layer_maps():
    prefix = PrefixStack(num_blocks=2).plan(4)
    assert [s.describe() for s in prefix.layers] == [
        "copy(0)+zero",
        "copy(1)+zero",
        "base(0)",
        "base(1)",
        "base(2)",
        "base(3)",
    ]
    assert prefix.trainable_layers == prefix.new_layers == [0, 1]
    suffix = SuffixStack(num_blocks=3).plan(4)
    assert [s.describe() for s in suffix.layers][4:] == [
        "copy(1)+zero",
        "copy(2)+zero",
        "copy(3)+zero",
    ]
    assert suffix.trainable_layers == [4, 5, 6]


def test_stack_surgery_renumbers_kv_slots(tiny_llama):
    model = tiny_llama(4)
    PrefixStack(num_blocks=1).expand(model)
    layers = get_arch(model).layers(model)
    assert [layer.self_attn.layer_idx for layer in layers] == list(range(5))
    assert torch.count_nonzero(layers[0].mlp.down_proj.weight) == 0
    assert torch.equal(layers[0].self_attn.q_proj.weight, layers[1].self_attn.q_proj.weight)


@pytest.mark.parametrize("cls", [PrefixStack, SuffixStack])
def test_stack_bad_block_counts_are_clear_errors(cls):
    with pytest.raises(ExpanderConfigError, match="num_blocks must be >= 1"):
        cls(num_blocks=0)
    with pytest.raises(ExpanderConfigError, match="exceeds the 4 base layers.*num_blocks <= 4"):
        cls(num_blocks=5).plan(4)
