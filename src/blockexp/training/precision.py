"""The precision policy of training an expanded model: which parameters are stored in which dtype.

Block expansion trains a small share of the parameters (LLaMA Pro 8.3B: 1.6B of 8.3B). Lightning's
``bf16-mixed`` keeps *every* parameter in float32 and casts on the fly, so the frozen 6.7B cost
4 bytes each for nothing. The ``lean`` policy stores:

    frozen parameters     bf16   (2 bytes, no float32 copy, no gradient, no optimizer state)
    trainable parameters  fp32   (master weights; fp32 gradients; AdamW state only for these)
    compute               bf16 autocast (matmuls in bf16, norms/softmax/loss in fp32)

Use it with ``trainer.precision: 32-true`` (the module enters the bf16 autocast itself) or
``bf16-mixed`` (Lightning's autocast is the same); ``bf16-true``/``16-true`` would cast the trainable
master weights down and are refused.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = [
    "PrecisionPolicy",
    "apply_precision_policy",
    "check_trainer_precision",
    "is_lean",
    "parameter_bytes",
]

PrecisionPolicy = Literal["full", "lean", "lean-int8", "lean-nf4"]
POLICIES = ("full", "lean", "lean-int8", "lean-nf4")


def is_lean(policy: str | None) -> bool:
    """``lean`` and its quantised-base variants (:mod:`blockexp.training.quantize`): frozen parameters in
    bf16 (or quantised), trainable ones in fp32, bf16 autocast."""
    return policy in ("lean", "lean-int8", "lean-nf4")


def apply_precision_policy(
    model: nn.Module,
    policy: PrecisionPolicy,
    frozen_dtype: torch.dtype = torch.bfloat16,
    trainable_dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Cast parameters in place according to ``policy`` (``requires_grad`` must already be set).

    ``full`` leaves the model as it is; ``lean`` (and ``lean-int8``/``lean-nf4``, whose
    quantisation :func:`blockexp.training.quantize.quantise_frozen_linears` applies afterwards) casts frozen
    floating-point parameters to ``frozen_dtype`` and trainable ones to ``trainable_dtype``. Buffers (e.g. rotary frequencies)
    are left alone. A parameter shared by several modules (tied embeddings) is cast once.
    """
    if policy == "full":
        return model
    if not is_lean(policy):
        raise ValueError(f"Unknown precision_policy '{policy}'; use one of {', '.join(POLICIES)}.")
    with torch.no_grad():
        for param in model.parameters():
            if not param.is_floating_point():
                continue
            target = trainable_dtype if param.requires_grad else frozen_dtype
            if param.dtype != target:
                param.data = param.data.to(target)
    return model


def check_trainer_precision(policy: PrecisionPolicy, trainer_precision: str | None) -> None:
    """Refuse trainer precisions that contradict the ``lean`` policy, naming the fix."""
    if not is_lean(policy) or trainer_precision is None:
        return
    if str(trainer_precision) in ("bf16-true", "16-true", "bf16", "16", "half"):
        raise ValueError(
            f"precision_policy '{policy}' keeps trainable weights in float32, but trainer.precision is "
            f"'{trainer_precision}', which casts them to 16 bits. Use trainer.precision 32-true "
            "(the module runs bf16 autocast itself) or bf16-mixed."
        )


def parameter_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes held by frozen and trainable parameters (shared parameters counted once)."""
    out = {"frozen": 0, "trainable": 0}
    for param in model.parameters():
        out["trainable" if param.requires_grad else "frozen"] += (
            param.numel() * param.element_size()
        )
    return out
