"""The quantised frozen base (precision_policy lean-int8 / lean-nf4, torchao)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("torchao")

from blockexp.expanders import (
    LlamaPro,
    PrefixStack,
    SLayer,
    SuffixStack,
)
from blockexp.training.module import BlockExpansionModule  # noqa: E402
from blockexp.training.quantize import quantise_frozen_linears, quantised_parameters  # noqa: E402
from blockexp.training.settings import Compute, Optim, Output

REPO = Path(__file__).resolve().parents[1]


def _save_base(path: Path) -> Path:
    """A tiny Llama on disk whose q/o/MLP weights suit NF4 (multiples of 16,384 elements) and
    whose k/v projections (64 x 128) do not."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=384,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    return _save_base(tmp_path_factory.mktemp("qbase") / "base")


def _module(base, policy: str, expander=None) -> BlockExpansionModule:
    module = BlockExpansionModule(
        base=str(base),
        expander=expander or LlamaPro(num_groups=2),
        tokenizer="byte",
        validate_before_fit=False,
        optim=Optim(lr=1e-3),
        compute=Compute(precision_policy=policy),
    )
    module.configure_model()
    return module


def _batch(n=2, seq=32, vocab=256, seed=0):
    ids = torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "labels": ids.clone()}


@pytest.mark.parametrize("policy", ["lean-int8", "lean-nf4"])
@pytest.mark.parametrize(
    "expander",
    [LlamaPro(num_groups=2), PrefixStack(2), SuffixStack(1), SLayer(num_deleted=1)],
    ids=lambda e: type(e).__name__,
)
def test_frozen_linears_quantised_trainable_untouched(base_dir, policy, expander):
    lean = _module(base_dir, "lean", expander)
    quant = _module(base_dir, policy, expander)
    trainable = quant.expansion.trainable
    quantised = quantised_parameters(quant.model)
    names = {n for n, p in quant.model.named_parameters() if any(p is q for q in quantised)}
    linears = {
        n + ".weight"
        for n, m in quant.model.named_modules()
        if isinstance(m, torch.nn.Linear) and n + ".weight" not in trainable and ".layers." in n
    }
    if policy == "lean-int8":  # every frozen linear of the decoder layers
        assert names == linears
    else:  # NF4: all but the k/v projections (8,192 elements, not a multiple of 16,384)
        kept = {n for n in linears if "k_proj" in n or "v_proj" in n}
        assert names == linears - kept and kept
        assert "k_proj" in str(quant.quant_summary)
    assert "lm_head.weight" not in names  # the head stays bf16 (see blockexp.training.quantize)
    # Trainable parameters, embeddings and norms are the lean ones, untouched.
    lean_params = dict(lean.model.named_parameters())
    for name, param in quant.model.named_parameters():
        if name not in names:
            assert type(param.data) is torch.Tensor, name
            assert torch.equal(param.detach(), lean_params[name].detach()), name
        assert param.requires_grad == (name in trainable), name
    # The frozen fingerprint vouches for the base's own (unquantised) weights: equal to lean's.
    assert quant._frozen_digest == lean._frozen_digest
    summary = quant.quant_summary
    ratio = summary.bytes_after / summary.bytes_before
    assert ratio < (0.53 if policy == "lean-int8" else 0.30), str(summary)
    # The function is the lean one up to quantisation error; gradients reach the new blocks.
    batch = _batch()
    loss_lean, _ = lean._loss(batch)
    loss_quant, _ = quant._loss(batch)
    tol = 0.005 if policy == "lean-int8" else 0.02
    assert abs(loss_quant.item() - loss_lean.item()) / loss_lean.item() < tol
    loss_quant.backward()
    grads = [p.grad for n, p in quant.model.named_parameters() if n in trainable]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_fit_resume_and_export_use_the_base_weights(base_dir, tmp_path, make_trainer):
    """Training under lean-int8: checkpoints hold the trainable parameters only; resuming works;
    fit's export and ``blockexp export`` of the checkpoint both carry the base's own frozen
    weights bit for bit and the trained blocks."""
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader

    from blockexp.training.export import export_checkpoint
    from tests.conftest import RandomBlocks

    def lean_int8(output: Output = Output()) -> BlockExpansionModule:  # noqa: B008
        return BlockExpansionModule(
            base=str(base_dir),
            expander=LlamaPro(num_groups=2),
            tokenizer="byte",
            validate_before_fit=False,
            optim=Optim(lr=1e-2, optimizer_state="int8"),
            compute=Compute(precision_policy="lean-int8"),
            output=output,
        )

    module = lean_int8(Output(export_dir=str(tmp_path / "export")))
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = make_trainer(tmp_path, 3, callbacks=[ckpt], enable_checkpointing=True)
    trainer.fit(module, train_dataloaders=DataLoader(RandomBlocks(seq_len=32), batch_size=2))
    trainable = module.expansion.trainable
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    stored = {k[len("model.") :] for k in state["state_dict"] if k.startswith("model.")}
    assert stored == set(trainable)

    exported = load_file(tmp_path / "export" / "model.safetensors")
    base = load_file(base_dir / "model.safetensors")
    plan = module.expansion.plan  # expanded index -> base index (None for a new block)
    for name, tensor in exported.items():
        if name in trainable:
            trained = dict(module.model.named_parameters())[name].detach()
            assert torch.equal(tensor, trained.to(tensor.dtype)), name
        elif ".layers." in name:
            idx = int(name.split(".layers.")[1].split(".")[0])
            source = name.replace(f".layers.{idx}.", f".layers.{plan.layers[idx].source[0]}.")
            assert torch.equal(tensor, base[source].to(torch.bfloat16)), name
        else:
            assert torch.equal(tensor, base[name].to(torch.bfloat16)), name

    out = export_checkpoint(str(tmp_path / "ckpt" / "last.ckpt"), str(tmp_path / "from_ckpt"))
    again = load_file(Path(out) / "model.safetensors")
    assert set(again) == set(exported)
    assert all(torch.equal(again[k], exported[k]) for k in exported)

    resumed = lean_int8()
    from blockexp.training.checkpoint_io import (
        AtomicCheckpointIO,  # the CLI's (torchao's 8-bit state
    )

    trainer2 = make_trainer(tmp_path / "r", 5, plugins=[AtomicCheckpointIO()])
    trainer2.fit(
        resumed,
        train_dataloaders=DataLoader(RandomBlocks(seq_len=32), batch_size=2),
        ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"),
    )
    assert trainer2.global_step == 5


def test_bad_settings_are_refused_early(base_dir):
    with pytest.raises(ValueError, match="save_frozen"):
        BlockExpansionModule(
            base=str(base_dir),
            expander=LlamaPro(2),
            compute=Compute(precision_policy="lean-int8"),
            output=Output(save_frozen=True),
        )
    with pytest.raises(ValueError, match="lean-int8"):
        BlockExpansionModule(
            base=str(base_dir), expander=LlamaPro(2), compute=Compute(precision_policy="int8")
        )
    with pytest.raises(ValueError, match="'nf8'"):
        quantise_frozen_linears(torch.nn.Linear(2, 2), "nf8")


FSDP_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from torch.utils.data import DataLoader
    from lightning.pytorch.strategies import ModelParallelStrategy
    from safetensors.torch import load_file
    from blockexp.expanders import LlamaPro
    from blockexp.training.module import BlockExpansionModule
    from blockexp.training.settings import Compute, Optim, Output
    from blockexp.training.trainer import make_trainer
    sys.path.insert(0, {repo!r})
    from tests.conftest import RandomBlocks

    base, policy, out = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    module = BlockExpansionModule(base=base, expander=LlamaPro(num_groups=2), tokenizer="byte",
                                  validate_before_fit=False, optim=Optim(lr=1e-2),
                                  compute=Compute(precision_policy=policy),
                                  output=Output(export_dir=out + "/export"))
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1,
                                     save_distributed_checkpoint=False)
    trainer = make_trainer(devices=2, strategy=strategy, max_steps=3, gradient_clip_val=None,
                           default_root_dir=out)
    trainer.fit(module, train_dataloaders=DataLoader(RandomBlocks(seq_len=32), batch_size=2))
    kinds = {{}}
    for name, p in module.model.named_parameters():
        kinds[name] = "dtensor" if hasattr(p, "full_tensor") else type(p.data).__name__
    if trainer.is_global_zero:
        exported = load_file(out + "/export/model.safetensors")
        json.dump({{"kinds": kinds, "loss": float(trainer.callback_metrics["train_loss"]),
                    "exported": sorted(exported), "trainable": sorted(module.expansion.trainable)}},
                  open(out + "/result.json", "w"))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["lean-int8", "lean-nf4"])
def test_fsdp2_two_gloo_processes_quantised(base_dir, tmp_path, policy):
    """FSDP2 shards the trainable and bf16 parameters; the quantised frozen weights stay whole on
    every rank; the run trains and exports."""
    script = tmp_path / "run.py"
    script.write_text(FSDP_SCRIPT.format(repo=str(REPO)))
    result = subprocess.run(
        [sys.executable, str(script), str(base_dir), policy, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    data = json.loads((tmp_path / "result.json").read_text())
    assert data["loss"] == data["loss"] and data["loss"] > 0
    kinds = data["kinds"]
    assert all(kinds[n] == "dtensor" for n in data["trainable"])
    quantised = [n for n, k in kinds.items() if k != "dtensor"]
    assert quantised and all(".layers." in n and "proj" in n for n in quantised)
    assert "model.embed_tokens.weight" not in quantised
    assert len(data["exported"]) == len(kinds)
