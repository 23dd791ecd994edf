"""DDP and FSDP2 (ModelParallelStrategy + fully_shard) with 2 gloo processes on CPU."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    import lightning as L
    from torch.utils.data import DataLoader
    from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
    from blockexp.expanders import LlamaPro
    from blockexp.training.module import BlockExpansionModule
    from blockexp.training.settings import Compute, Optim
    from blockexp.training.trainer import make_trainer
    sys.path.insert(0, {repo!r})
    from tests.conftest import RandomBlocks, tiny_llama_dict

    kind, policy, out = sys.argv[1], sys.argv[2], sys.argv[3]
    torch.set_num_threads(1)
    def make_strategy():
        return (
            DDPStrategy(process_group_backend="gloo") if kind == "ddp"
            else ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1,
                                       save_distributed_checkpoint=False)
        )
    strategy = make_strategy()
    module = BlockExpansionModule(base=tiny_llama_dict(4), expander=LlamaPro(num_groups=2),
                                  tokenizer="byte", optim=Optim(lr=1e-2),
                                  compute=Compute(precision_policy=policy))
    ref = BlockExpansionModule(base=tiny_llama_dict(4), expander=LlamaPro(num_groups=2),
                               tokenizer="byte", compute=Compute(precision_policy=policy))
    ref.configure_model()
    before = {{n: p.detach().clone() for n, p in ref.model.named_parameters()}}
    ckpt_cb = L.pytorch.callbacks.ModelCheckpoint(dirpath=out + "/ckpt", save_last=True)
    trainer = make_trainer(devices=2, strategy=strategy, max_steps=2, gradient_clip_val=None,
                           callbacks=[ckpt_cb], default_root_dir=out)
    trainer.fit(module, train_dataloaders=DataLoader(RandomBlocks(), batch_size=2))
    result = {{}}
    for name, p in module.model.named_parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p.detach()
        result[name] = {{
            "changed": not torch.equal(full.detach().cpu(), before[name]),
            "trainable": p.requires_grad,
            "dtype": str(full.dtype),
            "sharded": hasattr(p, "full_tensor"),
        }}
    # Resume from the (trainable-only) checkpoint under the same strategy and train on, with
    # checkpoints into the same directory (FSDP2 restores after setup: the run-directory check
    # must still see that this run resumes).
    resumed = BlockExpansionModule(base=tiny_llama_dict(4), expander=LlamaPro(num_groups=2),
                                   tokenizer="byte", optim=Optim(lr=1e-2),
                                   compute=Compute(precision_policy=policy))
    ckpt_cb2 = L.pytorch.callbacks.ModelCheckpoint(dirpath=out + "/ckpt", save_last=True)
    trainer2 = make_trainer(devices=2, strategy=make_strategy(), max_steps=4,
                            gradient_clip_val=None, callbacks=[ckpt_cb2], default_root_dir=out)
    trainer2.fit(resumed, train_dataloaders=DataLoader(RandomBlocks(), batch_size=2),
                 ckpt_path=out + "/ckpt/last.ckpt")
    if trainer.is_global_zero:
        state = torch.load(out + "/ckpt/last.ckpt", map_location="cpu", weights_only=True)
        keys = [k[len("model."):] for k in state["state_dict"] if k.startswith("model.")]
        json.dump({{"params": result, "loss": float(trainer.callback_metrics["train_loss"]),
                    "ckpt_params": keys, "resumed_step": trainer2.global_step}},
                  open(out + "/result.json", "w"))
    """
)


def _run(tmp_path, kind: str, policy: str) -> dict:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(repo=str(REPO)))
    result = subprocess.run(
        [sys.executable, str(script), kind, policy, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((tmp_path / "result.json").read_text())


def _check(data: dict) -> None:
    assert data["loss"] == data["loss"] and data["loss"] > 0  # finite
    params = data["params"]
    assert any(p["trainable"] for p in params.values())
    for name, p in params.items():
        assert p["changed"] == p["trainable"], name
    # Only what resuming needs is saved: the trainable parameters (plus optimizer/loop state).
    assert set(data["ckpt_params"]) == {n for n, p in params.items() if p["trainable"]}
    assert data["resumed_step"] == 4


@pytest.mark.slow
def test_ddp_two_gloo_processes(tmp_path):
    _check(_run(tmp_path, "ddp", "full"))


@pytest.mark.slow
def test_fsdp2_two_gloo_processes_lean(tmp_path):
    data = _run(tmp_path, "fsdp2", "lean")
    _check(data)
    params = data["params"]
    assert all(p["sharded"] for p in params.values())
    for p in params.values():
        assert p["dtype"] == ("torch.float32" if p["trainable"] else "torch.bfloat16")


@pytest.mark.parametrize("name", ["ddp.yaml", "fsdp.yaml"])
def test_strategy_configs_name_real_strategies(name):
    import importlib

    data = yaml.safe_load((REPO / "configs" / "strategy" / name).read_text())
    strategy = data["trainer"]["strategy"]
    module, _, cls = strategy["class_path"].rpartition(".")
    klass = getattr(importlib.import_module(module), cls)
    klass(**strategy["init_args"])  # the init_args are valid for the class
