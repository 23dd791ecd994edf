"""optimizer_in_backward: the same AdamW updates, stepped inside the backward pass."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from blockexp.expanders import LlamaPro
from blockexp.training.checkpoint_io import AtomicCheckpointIO
from blockexp.training.module import BlockExpansionModule
from blockexp.training.optim import OptimizerInBackward
from blockexp.training.settings import Optim
from tests.conftest import RandomBlocks, tiny_llama_dict


def _module(**optim) -> BlockExpansionModule:
    return BlockExpansionModule(
        base=tiny_llama_dict(4),
        expander=LlamaPro(num_groups=2),
        tokenizer="byte",
        validate_before_fit=False,
        optim=Optim(lr=1e-2, **optim),
    )


def _trained(module):
    return {
        n: p.detach().clone()
        for n, p in module.model.named_parameters()
        if n in module.expansion.trainable
    }


def _fit(module, trainer):
    trainer.fit(module, train_dataloaders=DataLoader(RandomBlocks(), batch_size=4))


@pytest.mark.parametrize("fused", [True, False])
def test_same_updates_as_adamw_after_the_backward(tmp_path, make_trainer, fused):
    plain = _module(fused_adamw=fused)
    inside = _module(fused_adamw=fused, optimizer_in_backward=True)
    _fit(plain, make_trainer(tmp_path / "a", 6, gradient_clip_val=None))
    trainer = make_trainer(tmp_path / "b", 6, gradient_clip_val=None)
    _fit(inside, trainer)
    assert trainer.global_step == 6
    optimizer = trainer.optimizers[0]
    assert isinstance(optimizer, OptimizerInBackward)
    assert optimizer.inner_steps == 6 * len(plain.expansion.trainable)
    a, b = _trained(plain), _trained(inside)
    changed = 0
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)
        changed += not torch.equal(a[name], _trained(_module_base())[name])
    assert changed  # the runs trained


def _module_base():
    module = _module()
    module.configure_model()
    return module


def test_resume_continues_the_same_run(tmp_path, make_trainer):
    from lightning.pytorch.callbacks import ModelCheckpoint

    straight = _module(optimizer_in_backward=True)
    ckpt = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=4, save_top_k=-1, filename="{step}"
    )
    _fit(
        straight,
        make_trainer(
            tmp_path / "s", 6, gradient_clip_val=None, callbacks=[ckpt], enable_checkpointing=True
        ),
    )
    resumed = _module(optimizer_in_backward=True)
    trainer = make_trainer(
        tmp_path / "r", 6, gradient_clip_val=None, plugins=[AtomicCheckpointIO()]
    )
    trainer.fit(
        resumed,
        train_dataloaders=DataLoader(RandomBlocks(), batch_size=4),
        ckpt_path=str(tmp_path / "ckpt" / "step=4.ckpt"),
    )
    assert trainer.global_step == 6
    a, b = _trained(straight), _trained(resumed)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)


def test_settings_that_need_all_gradients_are_refused(tmp_path, make_trainer):
    module = _module(optimizer_in_backward=True)
    with pytest.raises(ValueError, match="gradient_clip_val null"):
        _fit(module, make_trainer(tmp_path, 2, gradient_clip_val=1.0))
    with pytest.raises(ValueError, match="accumulate_grad_batches is 2"):
        _fit(module, make_trainer(tmp_path, 2, gradient_clip_val=None, accumulate_grad_batches=2))


def test_step_needs_the_closure():
    param = torch.nn.Parameter(torch.ones(3))
    opt = OptimizerInBackward([{"params": [param]}], lambda g: torch.optim.AdamW(g), lr=0.1)
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()
    loss = opt.step(lambda: (param * 2).sum().backward() or torch.tensor(0.0))
    assert loss is not None and param.grad is None and not torch.equal(param, torch.ones(3))
    with pytest.raises(ValueError, match="same optimizer_in_backward"):
        opt.load_state_dict({"inner": [], "param_groups": []})
