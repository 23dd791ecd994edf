"""Baseline strategies: prefix/suffix stacking, MoE expansion, LoRA, full fine-tuning.

The shared contract (depth, identity, freezing, export, cached generation) is in
test_contract.py; this file checks what is specific to each strategy, and the full path through
Lightning training, the training checkpoint and ``blockexp export``.
"""

from __future__ import annotations

import copy
import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import AutoModelForCausalLM

from blockexp.cli import main
from blockexp.data import CPTDataModule, DataSource
from blockexp.expanders import (
    ExpanderConfigError,
    FullFineTune,
    LoRA,
    MoEExpansion,
    PrefixStack,
    SuffixStack,
    build_expander,
    get_expander,
)
from blockexp.expanders.moe import MOE_WEIGHTS_NAME, MoEFeedForward, load_moe_model
from blockexp.layers import get_arch
from blockexp.module import BlockExpansionModule
from tests.conftest import tiny_llama_dict


def _ids(seed: int = 0, batch: int = 2, length: int = 10) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


# -- prefix / suffix stacking ---------------------------------------------------------------------
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


# -- MoE expansion --------------------------------------------------------------------------------
def test_moe_is_identity_for_any_router_weights(tiny_llama):
    base = tiny_llama(3)
    model = copy.deepcopy(base)
    MoEExpansion(num_experts=3, top_k=1).expand(model)
    with torch.no_grad():
        for layer in get_arch(model).layers(model):
            layer.mlp.router.weight.normal_(std=10.0)  # routing is arbitrary, output unchanged
        assert (model(_ids()).logits - base(_ids()).logits).abs().max() <= 1e-5


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
    assert expansion.extra == {"num_experts": 2, "top_k": 2}
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
        assert torch.equal(reloaded(_ids()).logits, model(_ids()).logits)


# -- LoRA -----------------------------------------------------------------------------------------
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
        assert (merged(_ids()).logits - peft_model(input_ids=_ids()).logits).abs().max() <= 1e-5
        assert (merged(_ids()).logits - base(_ids()).logits).abs().max() > 1e-3
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


@pytest.mark.parametrize(
    "args,trainable",
    [
        (["--expander", "LoRA", "--expander.r", "2", "--expander.target_modules", "[q_proj]"], 256),
        (["--expander", "MoEExpansion", "--expander.num_experts", "1"], 2 * (3 * 32 * 64 + 64)),
        (["--expander", "SuffixStack", "--expander.num_blocks", "1"], None),
        (["--expander", "FullFineTune"], None),
    ],
)
def test_plan_command_from_config_alone(tmp_path, capsys, args, trainable):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(tiny_llama_dict(2)))
    main(["plan", "--base", str(config), *args, "--json"])
    summary = json.loads(capsys.readouterr().out)
    if trainable is not None:  # LoRA: 2 layers x (A 2x32 + B 32x2); MoE: expert + router
        assert summary["trainable_params"] == trainable
    if args[1] == "SuffixStack":
        assert summary["num_layers"] == 3 and summary["layers"][2]["trainable"]
    if args[1] == "FullFineTune":
        assert summary["trainable_params"] == summary["total_params"]


# -- through Lightning and `blockexp export` ------------------------------------------------------
def _reload(name: str, directory):
    if name == "MoEExpansion":
        return load_moe_model(directory)
    return AutoModelForCausalLM.from_pretrained(directory).eval()


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("LoRA", {"r": 4, "alpha": 8, "dropout": 0.1}),
        ("MoEExpansion", {"num_experts": 1}),
        ("PrefixStack", {"num_blocks": 1}),
        ("FullFineTune", {}),
    ],
)
def test_fit_checkpoint_and_export_command(name, kwargs, corpus, tmp_path):
    module = BlockExpansionModule(
        base=tiny_llama_dict(2),
        expander=get_expander(name)(**kwargs),
        tokenizer="byte",
        lr=1e-2,
        export_dir=str(tmp_path / "exported"),
    )
    data = CPTDataModule(
        sources=[DataSource(name="c", path=str(corpus))],
        tokenizer="byte",
        seq_len=32,
        batch_size=4,
        cache_dir=str(tmp_path / "hf_cache"),
    )
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=3,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=data)
    main(["export", "--ckpt", str(tmp_path / "ckpt" / "last.ckpt"), "--out", str(tmp_path / "cli")])
    module.model.eval()
    ids = _ids(5)
    with torch.no_grad():
        want = module.model(input_ids=ids).logits
        for directory in ("exported", "cli"):
            got = _reload(name, tmp_path / directory)(input_ids=ids).logits
            assert (got - want).abs().max() <= 1e-5, directory
    manifest = json.loads((tmp_path / "cli" / "blockexp_manifest.json").read_text())
    assert manifest["expander"]["class_path"].endswith(name)
    assert manifest["trainable_params"] == module.expansion.parameter_counts()[1]


@pytest.mark.slow
def test_strategies_experiment_smoke(tmp_path):
    import importlib.util
    from pathlib import Path

    from blockexp.expanders import expander_names

    script = Path(__file__).resolve().parents[1] / "experiments/strategies/run.py"
    spec = importlib.util.spec_from_file_location("strategies_run", script)
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    out = tmp_path / "out"
    rows = run.main(["--steps", "3", "--base-steps", "3", "--val-batches", "1", "--out", str(out)])
    assert [r["strategy"] for r in rows] == expander_names()
    for name in ("results.csv", "results.md", "results.png"):
        assert (out / name).stat().st_size > 0
    assert len((out / "results.csv").read_text().splitlines()) == len(rows) + 1
