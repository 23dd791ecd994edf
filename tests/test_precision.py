"""Lean precision policy and gradient checkpointing behind a frozen prefix."""

from __future__ import annotations

import pytest
import torch

from blockexp.training.precision import (
    apply_precision_policy,
    check_trainer_precision,
    parameter_bytes,
)
from blockexp.training.settings import Compute
from tests.conftest import RandomBlocks


def test_lean_policy_dtypes_and_training(tmp_path, make_module, fit_module):
    module = make_module(compute=Compute(precision_policy="lean"))
    module.configure_model()
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable == set(module.expansion.trainable) and trainable
    for name, param in module.model.named_parameters():
        assert param.dtype == (torch.float32 if name in trainable else torch.bfloat16), name
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    trainer = fit_module(module, tmp_path)
    optimizer = trainer.optimizers[0]
    state_params = list(optimizer.state)
    assert {id(p) for p in state_params} == {
        id(p) for p in module.model.parameters() if p.requires_grad
    }
    for param in state_params:
        assert optimizer.state[param]["exp_avg"].dtype == torch.float32
    for name, param in module.model.named_parameters():
        changed = not torch.equal(before[name], param.detach())
        assert changed == (name in trainable) or (name in trainable and "norm" in name), name
        assert param.dtype == before[name].dtype
    assert torch.isfinite(trainer.callback_metrics["train_loss"])


def test_lean_halves_frozen_bytes(make_module):
    full, lean = make_module(), make_module(compute=Compute(precision_policy="lean"))
    full.configure_model()
    lean.configure_model()
    a, b = parameter_bytes(full.model), parameter_bytes(lean.model)
    assert b["frozen"] * 2 == a["frozen"] and b["trainable"] == a["trainable"]


def test_lean_loss_close_to_full_precision(make_module):
    full, lean = make_module(), make_module(compute=Compute(precision_policy="lean"))
    full.configure_model()
    lean.configure_model()
    batch = RandomBlocks(n=2)[0]
    batch = {k: v[None] for k, v in batch.items()}
    loss_full = full._loss(batch)[0]
    loss_lean = lean._loss(batch)[0]
    assert abs(loss_full.item() - loss_lean.item()) < 0.05 * loss_full.item()


def test_lean_refuses_true_half_precision(tmp_path, make_module, fit_module):
    with pytest.raises(ValueError, match="32-true"):
        fit_module(
            make_module(compute=Compute(precision_policy="lean")),
            tmp_path,
            steps=1,
            precision="bf16-true",
        )
    check_trainer_precision("lean", "32-true")
    check_trainer_precision("lean", "bf16-mixed")
    check_trainer_precision("full", "bf16-true")
    with pytest.raises(ValueError, match="Unknown precision_policy"):
        apply_precision_policy(torch.nn.Linear(2, 2), "tiny")


def test_gradient_checkpointing_behind_frozen_prefix(make_module):
    # LlamaPro(2) on 4 layers: layers 0, 1 frozen below the first trainable block (index 2).
    grads = {}
    for ckpt in (False, True):
        module = make_module(compute=Compute(gradient_checkpointing=ckpt))
        module.configure_model()
        module.model.train()
        flag = getattr(module.model, "is_activation_checkpointing", None)
        assert flag is None or flag == ckpt
        with torch.no_grad():  # leave the identity init so every trainable tensor gets a gradient
            gen = torch.Generator().manual_seed(1)
            for p in module.model.parameters():
                if p.requires_grad:
                    p.add_(0.1 * torch.randn(p.shape, generator=gen))
        batch = {k: v[None] for k, v in RandomBlocks(n=1)[0].items()}
        module._loss(batch)[0].backward()
        grads[ckpt] = {
            n: p.grad.clone() for n, p in module.model.named_parameters() if p.requires_grad
        }
        assert all(p.grad is None for p in module.model.parameters() if not p.requires_grad)
    assert grads[True].keys() == grads[False].keys()
    for name, g in grads[False].items():
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(grads[True][name], g, rtol=1e-4, atol=1e-6)


def test_lean_export_is_one_dtype_and_reloads(tmp_path, make_module, fit_module):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    module = make_module(compute=Compute(precision_policy="lean"))
    fit_module(module, tmp_path)
    out = module.export(tmp_path / "exported")
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    # The training model keeps its fp32 trainable weights; the export holds their bf16 rounding.
    trainable = next(iter(module.expansion.trainable))
    assert dict(module.model.named_parameters())[trainable].dtype == torch.float32
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.dtype == torch.bfloat16
    reference = module.model.eval()
    for param in reference.parameters():  # parameters only: buffers (rotary) stay fp32, as reloaded
        param.data = param.data.to(torch.bfloat16)
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, reference(ids).logits, rtol=0, atol=0)
