"""Choice of the attention kernel: flash-attn when it is installed on CUDA, PyTorch SDPA otherwise."""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import nn

__all__ = ["flash_attn_available", "select_attn_implementation", "uses_flash_attention"]


def flash_attn_available() -> bool:
    """True when the ``flash_attn`` package is installed and a CUDA device is present."""
    return importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()


def select_attn_implementation(requested: str | None = None, config: Any = None) -> str:
    """The attention kernel to use.

    ``None`` or ``"auto"``: ``flash_attention_2`` when :func:`flash_attn_available`, else ``sdpa``
    (PyTorch's scaled-dot-product attention); with ``config`` given, a kernel its model class
    does not support is skipped (Gemma 2 has no SDPA path in transformers 5: ``eager``). An
    explicit name is returned as given, except that ``flash_attention_2`` without flash-attn
    installed (or without CUDA) is a clear error.
    """
    if requested in (None, "auto"):
        if flash_attn_available() and _supports(config, "_supports_flash_attn"):
            return "flash_attention_2"
        return "sdpa" if _supports(config, "_supports_sdpa") else "eager"
    if requested == "flash_attention_2" and not flash_attn_available():
        raise ValueError(
            "attn_implementation 'flash_attention_2' needs the flash-attn package and a CUDA GPU "
            "(pip install -e '.[gpu]'); use 'auto' to fall back to 'sdpa'."
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
