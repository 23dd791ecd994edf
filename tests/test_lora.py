"""LoRA through peft: default targets, argument errors, export merges; config round trips of the
TRACE-style expanders."""

from __future__ import annotations

import copy

import pytest
import torch

from blockexp.expanders import (
    ExpanderConfigError,
    FullFineTune,
    LoRA,
    build_expander,
)
from tests.conftest import random_ids


def test_lora_default_targets_every_linear_of_every_block(tiny_llama):
    model = tiny_llama(2)
    targets = LoRA().resolve_targets(model)
    assert len(targets) == 2 * 7  # q k v o gate up down in each block
    assert "model.layers.1.mlp.down_proj" in targets and "lm_head" not in targets
    only = LoRA(target_modules=["self_attn.q_proj", "down_proj"]).resolve_targets(model)
    assert sorted(only) == [
        "model.layers.0.mlp.down_proj",
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.mlp.down_proj",
        "model.layers.1.self_attn.q_proj",
    ]


def test_lora_bad_arguments_are_clear_errors(tiny_llama):
    with pytest.raises(ExpanderConfigError, match=r"match no nn.Linear.*self_attn.q_proj"):
        LoRA(target_modules=["qproj"]).expand(tiny_llama(2))
    with pytest.raises(ExpanderConfigError, match="r must be >= 1"):
        LoRA(r=0)
    with pytest.raises(ExpanderConfigError, match="target_modules is empty"):
        LoRA(target_modules=[])


def test_lora_rank_and_export_merges_into_a_plain_model(tiny_llama):
    from peft import PeftModel

    base = tiny_llama(2)
    expansion = LoRA(r=3, alpha=6, target_modules=["o_proj"], train_norms=True).expand(
        copy.deepcopy(base)
    )
    peft_model = expansion.model
    lora_b = peft_model.base_model.model.model.layers[0].self_attn.o_proj.lora_B["default"]
    assert lora_b.weight.shape == (32, 3)
    assert "base_model.model.model.norm.weight" in expansion.trainable
    with torch.no_grad():
        lora_b.weight.normal_()
        merged = LoRA(r=3, alpha=6, target_modules=["o_proj"]).export_model(peft_model)
        assert type(merged) is type(base) and not isinstance(merged, PeftModel)
        assert (
            merged(random_ids()).logits - peft_model(input_ids=random_ids()).logits
        ).abs().max() <= 1e-5
        assert (merged(random_ids()).logits - base(random_ids()).logits).abs().max() > 1e-3
    assert isinstance(expansion.model, PeftModel)  # the training model keeps its adapters


def test_trace_style_configs_build():
    lora = build_expander(
        {
            "class_path": "blockexp.expanders.LoRA",
            "init_args": {"r": 4, "alpha": 8, "dropout": 0.05, "target_modules": ["q_proj"]},
        }
    )
    assert (lora.r, lora.alpha, lora.dropout, lora.target_modules) == (4, 8, 0.05, ["q_proj"])
    full = build_expander({"class_path": "blockexp.expanders.FullFineTune"})
    assert isinstance(full, FullFineTune)
    assert build_expander(full.config()).config() == full.config()
    assert build_expander(lora.config()).config() == lora.config()
