"""Building the training model (base, expander, precision policy) and its frozen-weight checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .checkpoint import ModelSpec, load_model
from .expanders import Expander

__all__ = [
    "check_fingerprint",
    "export_dtype",
    "frozen_fingerprint",
    "load_expanded",
    "resolve_tokenizer_spec",
]


def resolve_tokenizer_spec(tokenizer: str | None, base: ModelSpec) -> str:
    """The tokenizer to use: ``tokenizer`` if given, else the base model's own.

    An inline config (a random model, no files) has no tokenizer of its own: it gets the built-in
    byte-level tokenizer (``byte``), which needs ``vocab_size >= 259``. So switching a config from
    an inline tiny model to a real one is a one-line change of ``model.base``.
    """
    if tokenizer:
        return tokenizer
    if isinstance(base, dict):
        from .tokenization import BYTE_VOCAB_SIZE

        vocab = base.get("vocab_size")
        if vocab is not None and vocab < BYTE_VOCAB_SIZE:
            raise ValueError(
                f"The inline base config has vocab_size={vocab}, too small for the built-in byte "
                f"tokenizer ({BYTE_VOCAB_SIZE} ids): set model.tokenizer to a tokenizer directory "
                f"or hub id, or vocab_size >= {BYTE_VOCAB_SIZE}."
            )
        return "byte"
    return base


def _checksum(tensor: torch.Tensor) -> tuple[float, float]:
    tensor = tensor.detach()
    if hasattr(tensor, "full_tensor"):  # DTensor under FSDP2
        tensor = tensor.full_tensor()
    tensor = tensor.double()
    return float(tensor.sum()), float(tensor.abs().sum())


def frozen_fingerprint(model: torch.nn.Module, trainable: frozenset[str], count: int = 8) -> dict:
    """Checksums (sum, sum of absolute values) of up to ``count`` frozen tensors, evenly spread.

    Stored in trainable-only checkpoints so that resuming from a base whose weights changed fails
    loudly instead of silently training on different frozen weights.
    """
    params = dict(model.named_parameters())
    frozen = sorted(name for name in params if name not in trainable)
    step = max(1, len(frozen) // count)
    return {name: list(_checksum(params[name])) for name in frozen[::step][:count]}


def check_fingerprint(model: torch.nn.Module, expected: dict, base: str) -> None:
    """Raise if the frozen weights of ``model`` do not match a :func:`frozen_fingerprint`."""
    params = dict(model.named_parameters())
    for name, (total, absolute) in expected.items():
        if name not in params:
            raise ValueError(f"The checkpoint's frozen parameter {name} is not in the model.")
        got_total, got_absolute = _checksum(params[name])
        tol = 1e-6 * max(1.0, abs(absolute))
        if abs(got_total - total) > tol or abs(got_absolute - absolute) > tol:
            raise ValueError(
                f"The frozen weights of base '{base}' differ from those the checkpoint was trained "
                f"on ({name}). Resume with the same base, or train with save_frozen=true to make "
                "checkpoints self-contained."
            )


def load_expanded(
    hparams: Mapping[str, Any], expander: Expander, attn_implementation: str | None = None
) -> tuple[Any, dict[str, int], dict[str, Any]]:
    """Load the base as training does and expand it: dtype from the precision policy, the
    expander applied, trainable parameters marked, frozen ones cast under ``lean``.

    Returns:
        ``(expansion, base_info, base_config)``: the :class:`~blockexp.expanders.Expansion`, the
        base depth and parameter count, and the base config as a dict.
    """
    from .precision import apply_precision_policy

    policy = hparams.get("precision_policy", "full")
    model = load_model(
        hparams["base"],
        dtype="bfloat16" if policy == "lean" else hparams.get("dtype", "float32"),
        trust_remote_code=hparams.get("trust_remote_code", False),
        seed=hparams.get("seed", 0),
        attn_implementation=attn_implementation,
    )
    base_info = {
        "num_layers": int(model.config.num_hidden_layers),
        "params": sum(p.numel() for p in model.parameters()),
    }
    base_config = model.config.to_dict()
    expansion = expander.expand(model)
    expansion.freeze()
    apply_precision_policy(model, policy)
    return expansion, base_info, base_config


def export_dtype(precision_policy: str) -> torch.dtype | None:
    """The single dtype exports are stored in: bf16 under the ``lean`` policy (whose frozen
    weights are bf16), else ``None`` (as trained)."""
    return torch.bfloat16 if precision_policy == "lean" else None
