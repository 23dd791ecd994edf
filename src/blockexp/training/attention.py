"""Choice of the attention kernel: flash-attn when it is installed on CUDA, PyTorch SDPA otherwise."""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import nn

__all__ = ["flash_attn_available", "select_attn_implementation", "uses_flash_attention"]


def flash_attn_available() -> bool:
    """True when flash-attn 2 (the ``flash-attn`` distribution, as transformers checks it) is
    installed and a CUDA device is present. Another package that provides a ``flash_attn``
    module (flash-attn 4's ``flash_attn.cute``) does not count: transformers' ``flash_attention_2``
    would not find its functions."""
    if importlib.util.find_spec("flash_attn") is None or not torch.cuda.is_available():
        return False
    try:
        from transformers.utils import is_flash_attn_2_available
    except ImportError:  # pragma: no cover - transformers without the helper
        return True
    return bool(is_flash_attn_2_available())


def select_attn_implementation(
    requested: str | None = None, config: Any = None, half_precision: bool = True
) -> str:
    """The attention kernel to use.

    ``None`` or ``"auto"``: ``flash_attention_2`` when :func:`flash_attn_available` and the run
    computes in 16 bits (``half_precision``: flash-attn has no float32 kernels, and transformers
    hands a float32 model without autocast to it in float32), else ``sdpa`` (PyTorch's
    scaled-dot-product attention); with ``config`` given, a kernel its model class does not
    support is skipped (Gemma 2 has no SDPA path in transformers 5: ``eager``). An explicit name
    is returned as given, except that ``flash_attention_2`` without flash-attn installed (or
    without CUDA), or with float32 compute, is a clear error.
    """
    if requested in (None, "auto"):
        if half_precision and flash_attn_available() and _supports(config, "_supports_flash_attn"):
            return "flash_attention_2"
        return "sdpa" if _supports(config, "_supports_sdpa") else "eager"
    if requested == "flash_attention_2" and not flash_attn_available():
        raise ValueError(
            "attn_implementation 'flash_attention_2' needs the flash-attn package and a CUDA GPU "
            "(pip install -e '.[gpu]'); use 'auto' to fall back to 'sdpa'."
        )
    if requested == "flash_attention_2" and not half_precision:
        raise ValueError(
            "attn_implementation 'flash_attention_2' computes in bf16/fp16 only, but this run "
            "computes in float32: use model.compute.precision_policy lean or trainer.precision "
            "bf16-mixed, or attn_implementation 'auto' (falls back to 'sdpa')."
        )
    return requested


def _supports(config: Any, flag: str) -> bool:
    """Whether the causal-LM class of ``config`` declares ``flag`` (True when unknown)."""
    if config is None:
        return True
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        model_class = MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except (KeyError, ImportError):
        return True
    return bool(getattr(model_class, flag, True))


def uses_flash_attention(model: nn.Module) -> bool:
    """Whether ``model`` runs flash-attention-2 (then packed batches are flattened to one row)."""
    return getattr(model.config, "_attn_implementation", None) == "flash_attention_2"
