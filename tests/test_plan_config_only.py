"""``plan`` from config.json alone: tensor shapes from the architecture's formulas, no model.

Oracles: the safetensors headers ``save_pretrained`` writes (names and shapes, tensor by tensor),
the models ``transformers`` builds from its config classes' defaults, and the meta-device plan
(:func:`blockexp.expanders.dry_run.plan_summary`).
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from blockexp.expanders import FullFineTune, LlamaPro, LoRA, MoEExpansion, PrefixStack, SLayer
from blockexp.expanders.dry_run import plan_summary as meta_plan_summary
from blockexp.io import planning
from blockexp.io.safetensors import StreamingError, source_index
from blockexp.layers import PlanError, UnsupportedArchitectureError, get_arch, supported_model_types
from blockexp.layers.shapes import param_shapes
from tests.conftest import ARCH_CONFIGS, MIXED_MOE_CONFIGS, make_arch_model
from tests.test_benchmarks import _load
from tests.test_startup import MODEL_STACK, run_imports

# Every supported family (tied and untied, GQA: 4 heads, 2 KV heads), alternating dense and
# sparse FFNs, and every bias switch turned the other way.
CONFIGS = {
    **ARCH_CONFIGS,
    **{f"{name}_mixed": config for name, config in MIXED_MOE_CONFIGS.items()},
    "llama_biases": {**ARCH_CONFIGS["llama"], "attention_bias": True, "mlp_bias": True},
    "qwen3_attention_bias": {**ARCH_CONFIGS["qwen3"], "attention_bias": True},
    "olmo2_attention_bias": {**ARCH_CONFIGS["olmo2"], "attention_bias": True},
    "qwen2_moe_no_qkv_bias": {**ARCH_CONFIGS["qwen2_moe"], "qkv_bias": False},
    "gemma_untied": {**ARCH_CONFIGS["gemma"], "tie_word_embeddings": False},
    "mistral_head_dim": {**ARCH_CONFIGS["mistral"], "head_dim": 12},
}

# Llama-2-7B's config.json (meta-llama/Llama-2-7b-hf), as published: the one the plan benchmark
# (benchmarks/plan_config_only.py) and the README's Timings use.
LLAMA2_7B = _load("plan_config_only").LLAMA2_7B


GROUPS = ["--expander.num_groups", "2"]


def _config_dir(tmp_path, config: dict):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_param_shapes_are_what_save_pretrained_writes(tmp_path, name):
    make_arch_model(CONFIGS[name]).save_pretrained(tmp_path)
    saved = {tensor: entry.shape for tensor, entry in source_index(tmp_path).items()}
    assert param_shapes(CONFIGS[name]) == saved


@pytest.mark.parametrize("model_type", supported_model_types())
def test_omitted_fields_take_the_config_class_defaults(model_type):
    """A config.json with nothing but the model type and depth: the default-size model of the
    family's transformers config class (every default of its ParamLayout is used)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(
            AutoConfig.for_model(model_type, num_hidden_layers=2)
        )
    shapes = param_shapes({"model_type": model_type, "num_hidden_layers": 2})
    assert sum(map(math.prod, shapes.values())) == sum(p.numel() for p in model.parameters())
    if get_arch(model_type).shapes.num_experts is None:  # dense: the same names in memory
        assert shapes == {n: tuple(p.shape) for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_only_plan_equals_the_meta_model(tmp_path, name):
    base = _config_dir(tmp_path, CONFIGS[name])
    expanders = [
        LlamaPro(num_groups=2, train_embeddings=True, train_lm_head=True),
        SLayer(num_deleted=0),
        PrefixStack(num_blocks=1, train_norms=True),
        FullFineTune(),
        FullFineTune(train_embeddings=False, train_norms=False),
    ]
    if name.endswith("_mixed"):  # SLayer averages neighbours: a dense and a sparse layer
        with pytest.raises(PlanError, match="different structure"):
            meta_plan_summary(str(base), expanders[1])
        with pytest.raises(StreamingError, match="has no tensor"):
            planning.plan_summary(base, expanders.pop(1))
    for expander in expanders:
        oracle = meta_plan_summary(str(base), expander)
        for spelled in (base, base / "config.json"):
            assert planning.cannot_plan(expander, spelled) is None
            assert planning.plan_summary(spelled, expander) == oracle, (name, expander)


def test_llama2_7b_config_json_plans_without_torch_or_transformers(tmp_path):
    """The usual first try: LLaMA Pro 8.3B from Llama-2-7B's config.json, nothing downloaded."""
    base = _config_dir(tmp_path, LLAMA2_7B)
    args = ("--base", str(base), "--expander", "LlamaPro", "--expander.num_groups", "8")
    modules, out = run_imports("plan", "--json", *args)
    assert not modules & (MODEL_STACK | {"torchao", "peft"}), sorted(modules & MODEL_STACK)
    summary = json.loads(out)
    assert summary["base_params"] == 6_738_415_616  # Llama-2-7B
    assert (summary["base_num_layers"], summary["num_layers"]) == (32, 40)
    assert summary["total_params"] == 6_738_415_616 + 8 * 202_383_360  # 8 blocks of 202.4M
    assert summary["trainable_params"] == 8 * 202_383_360


def test_what_is_not_planned_from_files_and_why(tmp_path, monkeypatch):
    base = _config_dir(tmp_path, ARCH_CONFIGS["llama"])
    assert "adds modules" in planning.cannot_plan(LoRA(), base)
    assert "adds modules" in planning.cannot_plan(MoEExpansion(), base)
    assert "is a hub id" in planning.cannot_plan(LlamaPro(num_groups=2), "org/name")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        planning.cannot_plan(LlamaPro(num_groups=2), tmp_path / "nowhere")
    custom = _config_dir(tmp_path / "custom", {**ARCH_CONFIGS["llama"], "auto_map": {"a": "b"}})
    assert "auto_map" in planning.cannot_plan(LlamaPro(num_groups=2), custom)
    from blockexp.layers import arch as arch_module

    spec = dataclasses.replace(get_arch("llama"), shapes=None)
    monkeypatch.setitem(arch_module._ARCHS, "llama", spec)
    assert "declares no ParamLayout" in planning.cannot_plan(LlamaPro(num_groups=2), base)


def test_unsupported_or_malformed_configs_are_refused_by_name(tmp_path):
    falcon = _config_dir(tmp_path, {"model_type": "falcon", "num_hidden_layers": 2})
    with pytest.raises(UnsupportedArchitectureError, match=r"'falcon'.*supports: gemma"):
        planning.cannot_plan(LlamaPro(num_groups=2), falcon)
    with pytest.raises(UnsupportedArchitectureError, match=r"'falcon'.*supports: gemma"):
        param_shapes({"model_type": "falcon"})
    with pytest.raises(ValueError, match="'hidden_size' must be a positive integer, got '64'"):
        param_shapes({**ARCH_CONFIGS["llama"], "hidden_size": "64"})


def test_plan_command_notes_when_it_builds_the_model(tmp_path, capsys):
    from blockexp.cli import main

    base = _config_dir(tmp_path, ARCH_CONFIGS["llama"])
    main(["plan", "--json", "--base", str(base), "--expander", "LoRA"])
    captured = capsys.readouterr()
    assert "note: building the model on the meta device to plan: LoRA adds modules" in (
        captured.err
    )
    assert json.loads(captured.out)["strategy"] == "LoRA"
    main(["plan", "--json", "--base", str(base), "--expander", "LlamaPro"] + GROUPS)
    captured = capsys.readouterr()
    assert captured.err == "" and json.loads(captured.out)["num_layers"] == 6
