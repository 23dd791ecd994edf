"""Precision policy and attention selection for training an expanded model.

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

import importlib.util
from typing import Literal

import torch
from torch import nn

__all__ = [
    "PrecisionPolicy",
    "apply_precision_policy",
    "check_trainer_precision",
    "flash_attn_available",
    "packed_position_ids",
    "parameter_bytes",
    "select_attn_implementation",
    "shard_fsdp2",
]

PrecisionPolicy = Literal["full", "lean"]


def apply_precision_policy(
    model: nn.Module,
    policy: PrecisionPolicy,
    frozen_dtype: torch.dtype = torch.bfloat16,
    trainable_dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """Cast parameters in place according to ``policy`` (``requires_grad`` must already be set).

    ``full`` leaves the model as it is; ``lean`` casts frozen floating-point parameters to
    ``frozen_dtype`` and trainable ones to ``trainable_dtype``. Buffers (e.g. rotary frequencies)
    are left alone. A parameter shared by several modules (tied embeddings) is cast once.
    """
    if policy == "full":
        return model
    if policy != "lean":
        raise ValueError(f"Unknown precision_policy '{policy}'; use 'full' or 'lean'.")
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
    if policy != "lean" or trainer_precision is None:
        return
    if str(trainer_precision) in ("bf16-true", "16-true", "bf16", "16", "half"):
        raise ValueError(
            f"precision_policy 'lean' keeps trainable weights in float32, but trainer.precision is "
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


def flash_attn_available() -> bool:
    """True when the ``flash_attn`` package is installed and a CUDA device is present."""
    return importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()


def select_attn_implementation(requested: str | None = None) -> str:
    """The attention kernel to use.

    ``None`` or ``"auto"``: ``flash_attention_2`` when :func:`flash_attn_available`, else ``sdpa``
    (PyTorch's scaled-dot-product attention). An explicit name is returned as given, except that
    ``flash_attention_2`` without flash-attn installed (or without CUDA) is a clear error.
    """
    if requested in (None, "auto"):
        return "flash_attention_2" if flash_attn_available() else "sdpa"
    if requested == "flash_attention_2" and not flash_attn_available():
        raise ValueError(
            "attn_implementation 'flash_attention_2' needs the flash-attn package and a CUDA GPU "
            "(pip install -e '.[gpu]'); use 'auto' to fall back to 'sdpa'."
        )
    return requested


def shard_fsdp2(model: nn.Module, mesh) -> nn.Module:
    """Shard ``model`` with FSDP2: one ``fully_shard`` unit per decoder layer, then the root.

    Decoder layers are found by structure (:func:`blockexp.layers.get_arch`). Each layer is either
    wholly frozen or wholly trainable under a plan, so every unit has one ``requires_grad`` and,
    with the ``lean`` policy, one dtype.
    """
    from torch.distributed.fsdp import fully_shard

    from .layers.arch import get_arch

    for layer in get_arch(model.config).layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def packed_position_ids(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Position ids that restart at 0 after every ``eos_token_id`` (and at each row start).

    For packed blocks ``[doc A ... </s> doc B ...]`` this gives ``[0 1 .. n 0 1 ..]``. With
    these ``position_ids``, no attention mask and no KV cache (training), transformers detects
    the packed documents and SDPA/eager attention gets a block-diagonal causal mask; on a batch
    flattened to one row (:func:`flatten_packed_batch`), the flash-attention-2 path switches to
    variable-length attention (``cu_seqlens`` from the restarts). Either way no token attends
    across a document boundary.
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must be [batch, seq_len], got shape {tuple(input_ids.shape)}.")
    length = input_ids.shape[1]
    idx = torch.arange(length, device=input_ids.device).expand_as(input_ids)
    # A new document starts right after an eos: the start index of position t is the last such.
    starts = torch.zeros_like(input_ids, dtype=torch.long)
    starts[:, 1:] = torch.where(input_ids[:, :-1] == eos_token_id, idx[:, 1:], 0)
    starts = torch.cummax(starts, dim=1).values
    return idx - starts


def flatten_packed_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Turn a ``[B, L]`` packed batch with ``position_ids`` into one ``[1, B*L]`` row.

    transformers' flash-attention-2 path uses variable-length attention only for a single row;
    the first label of every original row is ignored so that no row predicts the next one's
    first token (the unflattened batch does not predict it either).
    """
    labels = batch["labels"].clone()
    labels[:, 0] = -100
    out = {
        "input_ids": batch["input_ids"].reshape(1, -1),
        "labels": labels.reshape(1, -1),
        "position_ids": batch["position_ids"].reshape(1, -1),
    }
    return out
