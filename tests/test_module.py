"""The LightningModule: freezing, optimizer, schedule, export."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from blockexp.data.cpt import CPTDataModule, DataSource
from blockexp.expanders import LlamaPro
from blockexp.io.inputs import OutputExistsError
from blockexp.io.manifest import MANIFEST_NAME
from blockexp.training.module import BlockExpansionModule, cosine_with_warmup
from blockexp.training.settings import Optim, Output
from tests.conftest import tiny_llama_dict


def _data(corpus, tmp_path) -> CPTDataModule:
    return CPTDataModule(
        sources=[DataSource(name="c", path=str(corpus))],
        tokenizer="byte",
        seq_len=32,
        batch_size=4,
        cache_dir=str(tmp_path / "hf_cache"),
    )


def test_frozen_parameters_bit_identical_trainable_changed(
    corpus, tmp_path, make_trainer, make_module
):
    module = make_module()
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}
    trainable = module.expansion.trainable
    make_trainer(tmp_path, steps=6).fit(module, datamodule=_data(corpus, tmp_path))
    after = dict(module.model.named_parameters())
    assert trainable and len(trainable) < len(before)
    for name, old in before.items():
        if name in trainable:
            assert not torch.equal(old, after[name]), f"{name} did not train"
        else:
            assert torch.equal(old, after[name]), f"frozen {name} changed"
            assert not after[name].requires_grad


def test_optimizer_defaults_and_groups(corpus, tmp_path, make_trainer):
    module = BlockExpansionModule(
        base=tiny_llama_dict(4), expander=LlamaPro(num_groups=2), tokenizer="byte"
    )
    module.configure_model()
    trainer = make_trainer(tmp_path, steps=100)
    module.trainer = trainer
    conf = module.configure_optimizers()
    opt = conf["optimizer"]
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["lr"] == 2e-4 and opt.defaults["betas"] == (0.9, 0.95)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim == 1 for p in no_decay["params"])  # norms (and biases) are not decayed
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    trainable = {
        id(p) for n, p in module.model.named_parameters() if n in module.expansion.trainable
    }
    assert in_opt == trainable
    assert opt.defaults["fused"] is True  # fused kernel on CPU by default


def test_fused_adamw_takes_the_same_steps_as_the_loop(corpus, tmp_path, make_trainer):
    """Fused (default) and per-tensor AdamW train the same weights up to float rounding."""
    from blockexp.training.adamw import fused_adamw_supported

    trained = []
    for fused in (None, False):
        torch.manual_seed(0)
        module = BlockExpansionModule(
            base=tiny_llama_dict(4),
            expander=LlamaPro(num_groups=2),
            tokenizer="byte",
            optim=Optim(lr=1e-2, fused_adamw=fused),
        )
        make_trainer(tmp_path / str(fused), steps=5).fit(module, datamodule=_data(corpus, tmp_path))
        assert bool(module.trainer.optimizers[0].defaults.get("fused")) is (fused is None)
        trained.append({n: p.detach() for n, p in module.model.named_parameters()})
    for name, value in trained[0].items():
        assert torch.allclose(value, trained[1][name], atol=1e-5), name
    assert not fused_adamw_supported([torch.zeros(2, dtype=torch.int64)])


def test_bf16_mixed_clips_with_fused_adamw(corpus, tmp_path, make_trainer):
    """bf16-mixed with clipping (the CLI's default 1.0) and fused AdamW: Lightning's plugin
    refuses to clip for an optimizer that unscales gradients itself, though bf16 has no scaler;
    the module clips itself, like the per-tensor loop under Lightning's own clipping."""
    trained = []
    for fused in (None, False):
        torch.manual_seed(0)
        module = BlockExpansionModule(
            base=tiny_llama_dict(4), expander=LlamaPro(num_groups=2), tokenizer="byte",
            validate_before_fit=False, optim=Optim(lr=1e-2, fused_adamw=fused),
        )  # fmt: skip
        trainer = make_trainer(
            tmp_path / str(fused), steps=3, precision="bf16-mixed", gradient_clip_val=0.01
        )
        trainer.fit(module, datamodule=_data(corpus, tmp_path))
        assert bool(trainer.optimizers[0].defaults.get("fused")) is (fused is None)
        trained.append({n: p.detach() for n, p in module.model.named_parameters()})
    for name, value in trained[0].items():
        assert torch.allclose(value, trained[1][name], atol=1e-5), name


def test_cosine_with_warmup_shape():
    total, warmup = 100, 6
    values = [cosine_with_warmup(s, total, warmup) for s in range(total)]
    assert values[0] == pytest.approx(1 / 6) and values[5] == pytest.approx(1.0)
    assert values[6] == pytest.approx(1.0)
    assert values[53] == pytest.approx(0.5, abs=0.02)
    assert all(a >= b for a, b in zip(values[6:], values[7:], strict=False))
    assert cosine_with_warmup(total, total, warmup, min_ratio=0.1) == pytest.approx(0.1)
    assert not math.isnan(cosine_with_warmup(0, 1, 0))


def test_export_matches_trained_module_and_protects_outputs(
    corpus, tmp_path, make_trainer, make_module
):
    module = make_module(output=Output(export_dir=str(tmp_path / "exported")))
    make_trainer(tmp_path, steps=3).fit(module, datamodule=_data(corpus, tmp_path))
    out = tmp_path / "exported"
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["new_layers"] == [2, 5] and manifest["num_layers"] == 6
    assert manifest["expander"]["init_args"]["num_groups"] == 2
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert reloaded.config.num_hidden_layers == 6
    ids = torch.randint(0, 256, (2, 16))
    module.model.eval()
    with torch.no_grad():
        assert (reloaded(ids).logits - module.model(ids).logits).abs().max() <= 1e-5
    with pytest.raises(OutputExistsError, match="already exists"):
        module.export(out)
    assert not list(tmp_path.glob(".exported.tmp-*"))  # nothing half-written left behind


def test_default_tokenizer_spec():
    from blockexp.training.loading import resolve_tokenizer_spec

    assert resolve_tokenizer_spec(None, tiny_llama_dict(2)) == "byte"
    with pytest.raises(ValueError, match="vocab_size=100, too small for the built-in byte"):
        resolve_tokenizer_spec(None, tiny_llama_dict(2, vocab_size=100))
    assert resolve_tokenizer_spec(None, "some/dir") == "some/dir"
    assert resolve_tokenizer_spec("byte", "some/dir") == "byte"


def test_tokenizer_larger_than_the_vocabulary_is_refused(corpus, tmp_path, make_trainer):
    module = BlockExpansionModule(
        base=tiny_llama_dict(2, vocab_size=200, pad_token_id=0, bos_token_id=1, eos_token_id=2),
        expander=LlamaPro(num_groups=1),
        tokenizer="byte",
    )
    with pytest.raises(ValueError, match="tokenizer has 259 ids but the model's embedding has 200"):
        make_trainer(tmp_path, steps=1).fit(module, datamodule=_data(corpus, tmp_path))


def test_int8_optimizer_state_trains_close_to_fp32_and_resumes(corpus, tmp_path, make_trainer):
    """``optimizer_state: int8`` (torchao AdamW8bit): 8-bit moments for the large tensors, a loss
    close to fp32 AdamW's after 30 steps, and a checkpoint that resumes (weights_only load)."""
    pytest.importorskip("torchao")
    import lightning as L

    base = tiny_llama_dict(4, hidden_size=64, intermediate_size=128)
    losses = {}

    def make(state: str) -> BlockExpansionModule:
        return BlockExpansionModule(
            base=base,
            expander=LlamaPro(num_groups=2),
            tokenizer="byte",
            optim=Optim(lr=3e-3, optimizer_state=state, fused_adamw=False),
        )

    for state in ("fp32", "int8"):
        torch.manual_seed(0)
        module = make(state)
        ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / state, save_last=True)
        trainer = make_trainer(
            tmp_path / state,
            steps=30,
            enable_checkpointing=True,
            callbacks=[ckpt],
            limit_val_batches=4,
        )
        trainer.fit(module, datamodule=_data(corpus, tmp_path))
        losses[state] = trainer.validate(module, datamodule=_data(corpus, tmp_path))[0]["val_loss"]
        if state == "int8":
            opt_state = trainer.optimizers[0].state
            dtypes = {type(s["exp_avg"]).__name__ for s in opt_state.values()}
            assert "OptimState8bit" in dtypes  # the large tensors' moments are 8-bit
            saved = torch.load(tmp_path / state / "last.ckpt", weights_only=True)
            assert saved["optimizer_states"]
            resumed = make(state)
            from blockexp.training.checkpoint_io import (
                AtomicCheckpointIO,  # the CLI's checkpoint IO
            )

            make_trainer(tmp_path / "resumed", steps=32, plugins=[AtomicCheckpointIO()]).fit(
                resumed,
                datamodule=_data(corpus, tmp_path),
                ckpt_path=str(tmp_path / state / "last.ckpt"),
            )
            assert resumed.trainer.global_step == 32
    assert abs(losses["int8"] - losses["fp32"]) <= 0.02 * losses["fp32"], losses


def test_unknown_optimizer_state_is_refused():
    with pytest.raises(ValueError, match="optimizer_state must be 'fp32' or 'int8'"):
        BlockExpansionModule(
            base=tiny_llama_dict(2), expander=LlamaPro(1), optim=Optim(optimizer_state="q4")
        )
