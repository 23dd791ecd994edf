"""The contract every registered expander keeps, one test matrix over all of them.

Adding a strategy: register it (``@register_expander``) and add ONE row to ``ROWS`` below (tiny
constructor args, base depth, expected depth and the parameters expected to train). Each row gets
every test in this file: depth, identity at initialisation (when the class claims
``is_identity()``), exact trainable set, only trainable parameters change after optimizer
steps, export + reload give the same logits, and cached generation works.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import nn

from blockexp.expanders import Expansion, expander_names, get_expander
from blockexp.io.load import load_model
from blockexp.io.save import save_pretrained_atomic
from blockexp.layers import get_arch
from blockexp.training.loss import causal_lm_forward_loss
from tests.conftest import tiny_llama_dict

TrainableFn = Callable[[nn.Module, Expansion], set[str]]


def _names(model: nn.Module, modules: list[nn.Module]) -> set[str]:
    wanted = {id(p) for m in modules for p in m.parameters()}
    return {n for n, p in model.named_parameters() if id(p) in wanted}


def layers_at(*indices: int) -> TrainableFn:
    """Every parameter of the decoder layers at ``indices`` (of the expanded model)."""

    def fn(model: nn.Module, expansion: Expansion) -> set[str]:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        layers = get_arch(base.config).layers(base)
        return _names(model, [layers[i] for i in indices])

    return fn


def every_parameter(model: nn.Module, expansion: Expansion) -> set[str]:
    return {n for n, _ in model.named_parameters()}


def lora_adapters(model: nn.Module, expansion: Expansion) -> set[str]:
    """The A and B matrices of every peft LoRA layer, found by module type."""
    from peft.tuners.lora import LoraLayer

    adapted = [m for m in model.modules() if isinstance(m, LoraLayer)]
    # 2 targets (q_proj, v_proj) in each of the 4 layers
    assert len(adapted) == 8, f"expected 8 adapted linear maps, found {len(adapted)}"
    return _names(model, [d for m in adapted for d in (m.lora_A, m.lora_B)])


def moe_experts_and_routers(model: nn.Module, expansion: Expansion) -> set[str]:
    arch = get_arch(model.config)
    ffns = [arch.mlp(layer) for layer in arch.layers(model)]
    return _names(model, [m for f in ffns for m in (f.experts, f.router)])


@dataclass(frozen=True)
class Row:
    """One expander in the matrix.

    Attributes:
        kwargs: tiny constructor arguments.
        trainable: the parameter names expected to train, computed independently of the
            expander's own bookkeeping where possible.
        num_layers: base depth.
        depth: expected depth after expansion (``None``: the plan's depth).
        model_overrides: extra tiny-config fields.
    """

    kwargs: dict[str, Any]
    trainable: TrainableFn
    num_layers: int = 4
    depth: int | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)


ROWS: dict[str, Row] = {
    # [0 1 1'] [2 3 3']
    "LlamaPro": Row({"num_groups": 2}, layers_at(2, 5), depth=6),
    # [0' 1'] [0 1 2 3]
    "PrefixStack": Row({"num_blocks": 2}, layers_at(0, 1), depth=6),
    # [0 1 2 3] [2' 3']
    "SuffixStack": Row({"num_blocks": 2}, layers_at(4, 5), depth=6),
    "MoEExpansion": Row({"num_experts": 2, "top_k": 2}, moe_experts_and_routers, depth=4),
    "LoRA": Row(
        {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}, lora_adapters, depth=4
    ),
    "FullFineTune": Row(
        {}, every_parameter, depth=4, model_overrides={"tie_word_embeddings": True}
    ),
    # SLayer defaults on 8 layers: [0 1 m(1,2) 2 3 m(3,4) 4 m(5,6,7)]; the last 2 layers are
    # deleted and merged into the trained final block, so it does not preserve the function.
    "SLayer": Row({}, layers_at(2, 5, 7), num_layers=8, depth=8),
}

NAMES = [name for name in expander_names() if name in ROWS]


def test_every_registered_expander_has_a_row():
    missing = [name for name in expander_names() if name not in ROWS]
    assert not missing, (
        f"Registered expander(s) {missing} have no row in tests/test_contract.py::ROWS. Add one "
        "row per expander (tiny constructor args, base depth, expected depth, expected trainable "
        "parameters) and the whole contract matrix runs on it."
    )


def _base(row: Row) -> nn.Module:
    model = load_model(
        tiny_llama_dict(row.num_layers, **row.model_overrides), dtype="float32", seed=0
    )
    with torch.no_grad():  # make wrong surgery visible in the logits (see conftest.tiny_llama)
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(5.0)
    return model.eval()


def _ids(seed: int, batch: int = 2, length: int = 12) -> torch.Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


@dataclass
class Case:
    name: str
    row: Row
    expander: Any
    base: nn.Module
    expansion: Expansion
    before: dict[str, torch.Tensor]
    init_logits: torch.Tensor


@pytest.fixture(scope="module", params=NAMES)
def case(request) -> Case:
    """Base model, expansion (frozen) and the state before training, for one matrix row."""
    name = request.param
    row = ROWS[name]
    expander = get_expander(name)(**row.kwargs)
    base = _base(row)
    expansion = expander.expand(copy.deepcopy(base))
    expansion.freeze()
    model = expansion.model.eval()
    with torch.no_grad():
        init_logits = model(input_ids=_ids(1)).logits
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    return Case(name, row, expander, base, expansion, before, init_logits)


@pytest.fixture(scope="module")
def trained(case: Case) -> Case:
    """The same case after three AdamW steps on random tokens (in place)."""
    model = case.expansion.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    for step in range(3):
        ids = _ids(100 + step, batch=4, length=16)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    return case


def test_depth(case: Case):
    model = case.expansion.model
    depth = case.row.depth
    if depth is None:
        assert case.expansion.plan is not None, "a row without `depth` needs a plan"
        depth = case.expansion.plan.num_layers
    assert model.config.num_hidden_layers == depth
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    assert len(get_arch(base.config).layers(base)) == depth
    if case.expansion.plan is not None:
        assert case.expansion.plan.num_layers == depth
        assert case.expansion.plan.base_num_layers == case.row.num_layers


def test_identity_at_init(case: Case):
    if not case.expander.is_identity():
        pytest.skip(f"{case.name}{case.row.kwargs} does not claim to preserve the function")
    with torch.no_grad():
        want = case.base(_ids(1)).logits
    assert (case.init_logits - want).abs().max().item() <= 1e-5


def test_trainable_set_is_exactly_the_expected_one(case: Case):
    model = case.expansion.model
    expected = case.row.trainable(model, case.expansion)
    assert expected, "the row expects no trainable parameter"
    assert set(case.expansion.trainable) == expected
    requires_grad = {n for n, p in model.named_parameters() if p.requires_grad}
    assert requires_grad == expected
    total, trainable = case.expansion.parameter_counts()
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if n in expected)
    assert 0 < trainable <= total


def test_only_trainable_parameters_change(trained: Case):
    after = dict(trained.expansion.model.named_parameters())
    assert set(after) == set(trained.before)
    for name, old in trained.before.items():
        if name in trained.expansion.trainable:
            assert not torch.equal(old, after[name]), f"{trained.name}: {name} did not train"
        else:
            assert torch.equal(old, after[name]), f"{trained.name}: frozen {name} changed"


def _reload(expander, directory) -> nn.Module:
    return type(expander).load_exported(directory)  # a declared capability of every expander


def test_export_and_reload_give_the_same_logits(trained: Case, tmp_path):
    model = trained.expansion.model
    ids = _ids(1)
    with torch.no_grad():
        want = model(input_ids=ids).logits
    assert (want - trained.init_logits).abs().max() > 1e-4, "training changed nothing"
    exported = trained.expander.export_model(model)
    save_pretrained_atomic(exported, tmp_path / "out")
    reloaded = _reload(trained.expander, tmp_path / "out")
    with torch.no_grad():
        got = reloaded(input_ids=ids).logits
        again = model(input_ids=ids).logits
    assert (got - want).abs().max().item() <= 1e-5
    assert torch.equal(again, want), "export modified the training model"
    assert reloaded.config.num_hidden_layers == model.config.num_hidden_layers


def test_generate_with_kv_cache(trained: Case):
    model = trained.expansion.model
    prompt = _ids(3, batch=2, length=6)
    kwargs = dict(
        max_new_tokens=8,
        do_sample=False,
        attention_mask=torch.ones_like(prompt),
        pad_token_id=256,
    )
    with torch.no_grad():
        cached = model.generate(input_ids=prompt, use_cache=True, **kwargs)
        uncached = model.generate(input_ids=prompt, use_cache=False, **kwargs)
        out = model(input_ids=prompt, use_cache=True)
    assert cached.shape == (2, 14)
    assert torch.equal(cached, uncached)
    assert len(out.past_key_values.layers) == model.config.num_hidden_layers


def test_chunked_loss_equals_the_models_own_loss(case: Case):
    """The module's chunked loss (blockexp.training.loss) works on every expander's model (PEFT wrapper,
    MoE layers, tied embeddings): same loss and same gradients as the model's own loss."""
    model = copy.deepcopy(case.expansion.model).train()
    ids = _ids(7, batch=2, length=12)
    reference = model(input_ids=ids, labels=ids).loss
    reference.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    loss, _ = causal_lm_forward_loss(model, ids, chunk_tokens=5, input_ids=ids)
    loss.backward()
    torch.testing.assert_close(loss, reference, rtol=0, atol=1e-5)
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert got.keys() == expected.keys() and got
    for name, grad in got.items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-5, msg=name)
