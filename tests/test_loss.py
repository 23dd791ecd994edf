"""Chunked causal-LM loss: the model's own loss and gradients, without the full logits; and the
module-level memory fixes around it (trainer autocast kept, gradients freed after the step)."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from blockexp.training.loss import causal_lm_forward_loss, chunked_causal_lm_loss, loss_chunk_tokens
from blockexp.training.settings import Compute


def _labels(ids: torch.Tensor) -> torch.Tensor:
    labels = ids.clone()
    labels[0, :5] = -100  # a prompt without loss
    labels[1, -3:] = -100  # padding at the end
    return labels


@pytest.mark.parametrize("chunk", [1, 7, None])
def test_chunked_loss_matches_the_models_own_loss_and_gradients(model_type, chunk, arch_model):
    model = arch_model(model_type).train()
    ids = torch.randint(0, 256, (2, 19), generator=torch.Generator().manual_seed(1))
    labels = _labels(ids)
    position_ids = torch.arange(19).repeat(2, 1)

    reference = model(input_ids=ids, labels=labels, position_ids=position_ids).loss
    reference.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    loss, n_tokens = causal_lm_forward_loss(
        model, labels, chunk_tokens=chunk, input_ids=ids, position_ids=position_ids
    )
    loss.backward()
    assert n_tokens.item() == int((labels[:, 1:] != -100).sum())
    torch.testing.assert_close(loss, reference, rtol=0, atol=1e-5)
    for name, param in model.named_parameters():  # lm_head included: it is trainable here
        torch.testing.assert_close(param.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_logits_exist_one_chunk_at_a_time(arch_model):
    model = arch_model("llama").train()
    ids = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(0))
    rows: list[int] = []  # rows of every logits tensor lm_head produces (forward and recompute)
    model.lm_head.register_forward_hook(lambda m, a, out: rows.append(out[..., 0].numel()))
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: list[torch.Size] = []  # activations saved between forward and backward

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            kept.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids).loss.backward()
    assert max(rows) == 2 * 64  # the model's own loss: logits for every position...
    assert any(s[-1] == model.config.vocab_size for s in kept)  # ...kept for the backward

    rows.clear(), kept.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        causal_lm_forward_loss(model, ids, chunk_tokens=16, input_ids=ids)[0].backward()
    # One position per sequence (logits_to_keep), then 126 predicted tokens in chunks of 16, each
    # computed in the forward and again in the backward.
    assert rows[0] == 2 and max(rows[1:]) == 16 and sum(rows[1:]) == 2 * 126
    assert not any(s[-1] == model.config.vocab_size for s in kept)


def test_all_ignored_labels_give_zero_loss_and_zero_gradients(arch_model):
    model = arch_model("llama").train()
    ids = torch.randint(0, 256, (2, 8))
    labels = torch.full_like(ids, -100)
    loss, n_tokens = causal_lm_forward_loss(model, labels, input_ids=ids)
    loss.backward()
    assert loss.item() == 0.0 and n_tokens.item() == 0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_shape_mismatch_and_chunk_size_rule():
    head = torch.nn.Linear(4, 10)
    with pytest.raises(ValueError, match=r"disagree on \[batch, seq\]"):
        chunked_causal_lm_loss(torch.zeros(2, 5, 4), torch.zeros(2, 6, dtype=torch.long), head)
    # budget_mb MiB of float32 logits per chunk, capped at the token count, at least one token.
    assert loss_chunk_tokens(8192, 32000) == 256 * 2**20 // (4 * 32000) == 2097
    assert loss_chunk_tokens(512, 32000) == 512  # fits: one chunk
    assert loss_chunk_tokens(4096, 128256) == 523
    assert loss_chunk_tokens(4096, 32000, budget_mb=1) == 8
    assert loss_chunk_tokens(10, 10**9, budget_mb=1) == 1
    with pytest.raises(ValueError, match="> 0"):
        loss_chunk_tokens(10, 100, budget_mb=0)


def test_one_chunk_within_the_budget_is_not_recomputed(arch_model):
    """Logits that fit the budget: lm_head runs once over the labelled tokens (no checkpoint
    recomputation in the backward); over budget: chunks, each run twice. Same loss and grads."""
    model = arch_model("llama").train()
    ids = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(1))
    rows: list[int] = []
    model.lm_head.register_forward_hook(lambda m, a, out: rows.append(out[..., 0].numel()))
    results = []
    for budget in (256.0, 16 * 4 * 259 / 2**20):  # default; 16 tokens' logits per chunk
        rows.clear()
        model.zero_grad()
        loss, _ = causal_lm_forward_loss(model, ids, budget_mb=budget, input_ids=ids)
        loss.backward()
        results.append((loss.detach(), model.lm_head.weight.grad.clone(), list(rows)))
    (loss_one, grad_one, rows_one), (loss_many, grad_many, rows_many) = results
    assert rows_one == [2, 2 * 63]  # logits_to_keep row, then one chunk, no recompute
    assert max(rows_many[1:]) == 16 and sum(rows_many[1:]) == 2 * 2 * 63
    assert torch.allclose(loss_one, loss_many, atol=1e-6)
    assert torch.allclose(grad_one, grad_many, atol=1e-6)


@pytest.mark.parametrize("policy", ["lean", "full"])
def test_module_loss_is_the_same_with_and_without_chunking(policy, make_module):
    batch = {"input_ids": torch.randint(0, 256, (2, 16)), "labels": None}
    batch["labels"] = _labels(batch["input_ids"])
    losses = []
    for chunked in (True, False):
        module = make_module(compute=Compute(precision_policy=policy, chunked_loss=chunked))
        module.configure_model()
        losses.append(module._loss(batch))
    # lean runs in bf16 autocast: the two paths round differently, within bf16 precision.
    torch.testing.assert_close(
        losses[0][0], losses[1][0], rtol=0, atol=1e-5 if policy == "full" else 2e-2
    )
    assert losses[0][1] == losses[1][1]


class _Probe(L.Callback):
    """Records the dtype a decoder projection computes in and whether gradients survive the
    optimizer step."""

    def __init__(self) -> None:
        self.dtypes: list[torch.dtype] = []
        self.grads_after_step: list[bool] = []

    def on_fit_start(self, trainer, module):
        proj = module.model.model.layers[0].mlp.down_proj
        proj.register_forward_hook(lambda m, a, out: self.dtypes.append(out.dtype))

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.grads_after_step.append(any(p.grad is not None for p in module.parameters()))


@pytest.mark.parametrize(
    ("policy", "precision", "dtype"),
    [
        ("full", "bf16-mixed", torch.bfloat16),
        ("full", "32-true", torch.float32),
        ("lean", "32-true", torch.bfloat16),
    ],
)
def test_trainer_autocast_is_kept_and_gradients_are_freed_after_each_step(
    tmp_path, policy, precision, dtype, make_module, fit_module
):
    probe = _Probe()
    module = make_module(validate_before_fit=False, compute=Compute(precision_policy=policy))
    fit_module(module, tmp_path, precision=precision, callbacks=[probe])
    # bf16-mixed with the full policy really computes in bf16 (the module's own autocast
    # context used to switch the trainer's off).
    assert probe.dtypes and set(probe.dtypes) == {dtype}
    assert probe.grads_after_step == [False, False, False]
