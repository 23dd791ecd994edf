"""The typed training settings: defaults, value checks, hyper-parameters as plain data."""

from __future__ import annotations

import io

import pytest
import torch

from blockexp.training.settings import Compute, Optim, Output, Settings


def test_defaults_are_the_llama_pro_papers():
    optim = Optim()
    assert (optim.lr, optim.betas, optim.weight_decay, optim.warmup_ratio) == (
        2e-4,
        (0.9, 0.95),
        0.1,
        0.06,
    )
    assert Compute().precision_policy == "full" and Compute().chunked_loss
    assert Output() == Output(export_dir=None, export_overwrite=False, save_frozen=False)


def test_hparams_are_plain_data_and_come_back_whole():
    settings = Settings(
        base={"model_type": "llama"},
        tokenizer="byte",
        optim={"lr": 1e-3, "betas": [0.8, 0.9]},
        compute=Compute(precision_policy="lean"),
        output=Output(export_dir="out"),
    )
    assert settings.optim == Optim(lr=1e-3, betas=(0.8, 0.9))
    buffer = io.BytesIO()
    torch.save({"hyper_parameters": settings.to_hparams()}, buffer)
    buffer.seek(0)
    stored = torch.load(buffer, weights_only=True)["hyper_parameters"]
    assert stored["optim"]["lr"] == 1e-3 and stored["compute"]["precision_policy"] == "lean"
    assert Settings.from_hparams(stored) == settings


def test_flat_hparams_of_earlier_checkpoints_are_read_into_their_groups():
    flat = {"base": "b", "lr": 5e-3, "precision_policy": "lean", "save_frozen": True, "seed": 3}
    settings = Settings.from_hparams(flat)
    assert settings.optim.lr == 5e-3 and settings.optim.eps == Optim().eps
    assert settings.compute.precision_policy == "lean" and settings.output.save_frozen
    assert settings.seed == 3 and settings.tokenizer is None


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Optim(lr=0.0), "lr must be > 0"),
        (lambda: Optim(warmup_ratio=1.0), r"warmup_ratio must be in \[0, 1\)"),
        (lambda: Optim(optimizer_state="q4"), "optimizer_state must be 'fp32' or 'int8'"),
        (lambda: Compute(precision_policy="int8"), "precision_policy must be one of"),
        (lambda: Compute(loss_chunk_mb=0), "loss_chunk_mb must be > 0"),
        (
            lambda: Settings(
                base="b",
                compute=Compute(precision_policy="lean-int8"),
                output={"save_frozen": True},
            ),
            "save_frozen",
        ),
    ],
)
def test_values_are_checked_where_they_are_made(make, message):
    with pytest.raises(ValueError, match=message):
        make()
