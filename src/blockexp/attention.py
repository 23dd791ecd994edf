"""Choice of the attention kernel: flash-attn when it is installed on CUDA, PyTorch SDPA otherwise."""

from __future__ import annotations

import importlib.util

import torch
from torch import nn

__all__ = ["flash_attn_available", "select_attn_implementation", "uses_flash_attention"]


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


def uses_flash_attention(model: nn.Module) -> bool:
    """Whether ``model`` runs flash-attention-2 (then packed batches are flattened to one row)."""
    return getattr(model.config, "_attn_implementation", None) == "flash_attention_2"
