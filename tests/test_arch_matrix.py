"""The architecture matrix: every supported family (one row of ``ARCH_CONFIGS``) under every
depth-changing identity strategy.

For each row and strategy, on a tiny random checkpoint saved to disk:

* the expanded model's logits equal the base's exactly in fp32 (``torch.equal``), and cached
  greedy generation gives the same tokens;
* streaming expansion writes bit for bit the tensors that in-memory expansion saves;
* the config follows the plan: depth, and every per-layer list (any list with one entry per base
  layer) has one entry per new layer, taken from the new layer's first source;
* ``plan`` (config only, no weights) gives the parameter counts of the built model;
* the written directory loads with plain ``transformers`` and computes the base function.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModelForCausalLM

from blockexp.expanders import (
    LlamaPro,
    PrefixStack,
    SLayer,
    SuffixStack,
)
from blockexp.expanders.dry_run import plan_summary
from blockexp.io.streaming import stream_expand
from blockexp.layers import get_arch, supported_model_types
from blockexp.training.settings import Optim, Output
from tests.conftest import ARCH_CONFIGS, MIXED_MOE_CONFIGS, make_arch_model

EXPANDERS = {
    "LlamaPro": lambda: LlamaPro(num_groups=2),
    "SLayer-d0": lambda: SLayer(num_deleted=0),
    "PrefixStack": lambda: PrefixStack(num_blocks=1),
    "SuffixStack": lambda: SuffixStack(num_blocks=2),
}
BASE_LAYERS = 4


def test_every_supported_type_has_a_matrix_row():
    rows = {cfg["model_type"] for cfg in ARCH_CONFIGS.values()}
    assert rows == set(supported_model_types())
    assert {
        "llama",
        "mistral",
        "qwen2",
        "qwen3",
        "phi3",
        "gemma",
        "gemma2",
        "gemma3_text",
        "olmo2",
        "mixtral",
        "qwen2_moe",
        "qwen3_moe",
    } <= rows


@pytest.fixture(scope="module")
def saved_bases(tmp_path_factory):
    """Factory: the row's base model, saved once per row as safetensors (with a tokenizer)."""
    cache: dict[str, tuple[torch.nn.Module, Path]] = {}

    def get(row: str, config: dict | None = None):
        if row not in cache:
            model = make_arch_model(config or ARCH_CONFIGS[row])
            path = tmp_path_factory.mktemp(row) / "base"
            model.save_pretrained(path, safe_serialization=True, max_shard_size="60KB")
            cache[row] = (model, path)
        return cache[row]

    return get


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        with safe_open(str(f), "pt") as handle:
            for key in handle.keys():
                out[key] = handle.get_tensor(key)
    return out


def _per_layer_lists(config) -> dict[str, list]:
    return {
        k: v
        for k, v in config.to_dict().items()
        if isinstance(v, list) and len(v) == config.num_hidden_layers
    }


def _generate(model, ids):
    return model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=10,
        do_sample=False,
        use_cache=True,
        pad_token_id=256,
    )


@torch.no_grad()
def check_row(base, base_dir: Path, expander_factory, tmp_path: Path) -> None:
    expander = expander_factory()
    assert expander.is_identity()
    arch = get_arch(base)

    # In memory: exact logits, same cached greedy tokens, config per plan.
    model = copy.deepcopy(base)
    expansion = expander.expand(model)
    plan = expansion.plan
    assert model.config.num_hidden_layers == plan.num_layers == len(arch.layers(model))
    ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))
    assert torch.equal(base(ids).logits, model(ids).logits)
    prompt = ids[:, :6]
    assert torch.equal(_generate(base, prompt), _generate(model, prompt))
    out = model(ids, use_cache=True)
    assert len(out.past_key_values.layers) == plan.num_layers
    base_lists = _per_layer_lists(base.config)
    new_cfg = model.config.to_dict()
    for name, values in base_lists.items():
        assert new_cfg[name] == [values[s.source[0]] for s in plan.layers], name
    layer_types = getattr(model.config, "layer_types", None)
    if layer_types is not None:  # every attention module was built for its config entry
        for layer, kind in zip(arch.layers(model), layer_types, strict=True):
            if hasattr(layer, "attention_type"):
                assert layer.attention_type == kind
    for i, layer in enumerate(arch.layers(model)):
        assert layer.self_attn.layer_idx == i

    # On disk: streaming equals in-memory bit for bit.
    reference = tmp_path / "in_memory"
    model.save_pretrained(reference, safe_serialization=True)
    streamed = tmp_path / "streamed"
    manifest = stream_expand(base_dir, streamed, expander, max_shard_size="60KB")
    ref, got = _tensors(reference), _tensors(streamed)
    assert sorted(got) == sorted(ref)
    for key, value in ref.items():
        assert torch.equal(got[key], value), key
    cfg = json.loads((streamed / "config.json").read_text())
    ref_cfg = json.loads((reference / "config.json").read_text())
    for key in ("num_hidden_layers", *_per_layer_lists(model.config), "mlp_only_layers"):
        assert cfg.get(key) == ref_cfg.get(key), key

    # plan's counts (config only) are the built model's.
    total, trainable = expansion.parameter_counts()
    summary = plan_summary(str(base_dir), expander_factory())
    assert (summary["total_params"], summary["trainable_params"]) == (total, trainable)
    assert sum(p.numel() for p in model.parameters()) == total
    assert (manifest["total_params"], manifest["trainable_params"]) == (total, trainable)

    # The streamed directory is a plain transformers checkpoint computing the base function.
    loaded = AutoModelForCausalLM.from_pretrained(streamed).eval()
    assert type(loaded) is type(base)
    assert torch.equal(loaded(ids).logits, base(ids).logits)


@pytest.mark.parametrize("expander_name", sorted(EXPANDERS))
@pytest.mark.parametrize("row", sorted(ARCH_CONFIGS))
def test_architecture_matrix(row, expander_name, saved_bases, tmp_path):
    base, base_dir = saved_bases(row)
    check_row(base, base_dir, EXPANDERS[expander_name], tmp_path)


@pytest.mark.parametrize("row", sorted(MIXED_MOE_CONFIGS))
def test_mixed_dense_and_sparse_layers_follow_the_plan(row, saved_bases, tmp_path):
    """Qwen-MoE with dense layers: each new layer is dense or sparse like its source, written as
    an explicit ``mlp_only_layers`` list (``decoder_sparse_step`` becomes 1)."""
    base, base_dir = saved_bases(f"{row}-mixed", MIXED_MOE_CONFIGS[row])
    arch = get_arch(base)
    sparse = [arch.is_sparse(layer) for layer in arch.layers(base)]
    assert True in sparse and False in sparse
    check_row(base, base_dir, EXPANDERS["LlamaPro"], tmp_path / "llamapro")
    model = copy.deepcopy(base)
    plan = LlamaPro(num_groups=2).expand(model).plan
    assert [arch.is_sparse(layer) for layer in arch.layers(model)] == [
        sparse[s.source[0]] for s in plan.layers
    ]
    assert model.config.decoder_sparse_step == 1
    assert model.config.mlp_only_layers == [s.index for s in plan.layers if not sparse[s.source[0]]]
    # Averaging a dense and a sparse neighbour is refused with the reason.
    from blockexp.layers import PlanError

    with pytest.raises(PlanError, match="different structure"):
        SLayer(num_deleted=0).expand(copy.deepcopy(base))


def test_moe_writers_are_every_expert_and_the_shared_expert(saved_bases):
    base, _ = saved_bases("qwen2_moe")
    model = copy.deepcopy(base)
    plan = LlamaPro(num_groups=2).expand(model).plan
    layers = get_arch(model).layers(model)
    for spec in plan.layers:
        mlp = layers[spec.index].mlp
        zeroed = [
            mlp.experts.down_proj,
            mlp.shared_expert.down_proj.weight,
            mlp.shared_expert_gate.weight,
            layers[spec.index].self_attn.o_proj.weight,
        ]
        assert all(bool((t == 0).all()) == spec.zero_out for t in zeroed)
        # The router of a copied block is the source's router.
        source = get_arch(base).layers(base)[spec.source[0]].mlp
        assert torch.equal(mlp.gate.weight, source.gate.weight)


def test_readme_lists_exactly_the_matrix():
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme[readme.index("Supported architectures (") :]
    block = block[: block.index("Anything else is")]
    listed = set(re.findall(r"`([a-z0-9_]+)`", block.split("):", 1)[1]))
    assert listed == set(supported_model_types())


@pytest.mark.parametrize("row", sorted(ARCH_CONFIGS))
def test_training_and_export_on_every_architecture(row, saved_bases, tmp_path, fit_module):
    """Two LLaMA Pro training steps from the saved base: frozen weights stay bit-identical, the
    new blocks move, and the export reloads as a plain model computing the trained function."""
    from blockexp.training.module import BlockExpansionModule

    _, base_dir = saved_bases(row)
    module = BlockExpansionModule(
        base=str(base_dir),
        expander=LlamaPro(num_groups=2),
        tokenizer="byte",
        optim=Optim(lr=1e-2),
        output=Output(export_dir=str(tmp_path / "exported")),
    )
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    trainable = module.expansion.trainable
    fit_module(module, tmp_path, steps=2)
    after = dict(module.model.named_parameters())
    assert trainable and len(trainable) < len(before)
    for name, old in before.items():
        if name not in trainable:
            assert torch.equal(old, after[name]), f"frozen {name} changed"
    assert any(not torch.equal(before[n], after[n]) for n in trainable)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "exported").eval()
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(5))
    module.model.eval()
    with torch.no_grad():
        diff = (reloaded(ids).logits.float() - module.model(ids).logits.float()).abs().max()
    assert diff <= 1e-5, diff
