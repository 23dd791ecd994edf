"""Every kind of strategy through Lightning training, the training checkpoint and
``blockexp export``: the exported model gives the trained model's logits."""

from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from blockexp.cli import main
from blockexp.data.cpt import CPTDataModule, DataSource
from blockexp.expanders import get_expander
from blockexp.training.module import BlockExpansionModule
from blockexp.training.settings import Optim, Output
from blockexp.training.trainer import make_trainer
from tests.conftest import random_ids, tiny_llama_dict


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
        optim=Optim(lr=1e-2),
        output=Output(export_dir=str(tmp_path / "exported")),
    )
    data = CPTDataModule(
        sources=[DataSource(name="c", path=str(corpus))],
        tokenizer="byte",
        seq_len=32,
        batch_size=4,
        cache_dir=str(tmp_path / "hf_cache"),
    )
    trainer = make_trainer(
        max_steps=3,
        gradient_clip_val=None,
        limit_val_batches=1,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=data)
    main(["export", "--ckpt", str(tmp_path / "ckpt" / "last.ckpt"), "--out", str(tmp_path / "cli")])
    module.model.eval()
    ids = random_ids(5)
    with torch.no_grad():
        want = module.model(input_ids=ids).logits
        for directory in ("exported", "cli"):
            got = get_expander(name).load_exported(tmp_path / directory)(input_ids=ids).logits
            assert (got - want).abs().max() <= 1e-5, directory
    manifest = json.loads((tmp_path / "cli" / "blockexp_manifest.json").read_text())
    assert manifest["expander"]["class_path"].endswith(name)
    assert manifest["trainable_params"] == module.expansion.parameter_counts()[1]
