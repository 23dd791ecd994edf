"""Building the training model: base, expander and precision policy (architecture checked first)."""

from __future__ import annotations

from typing import Any

import torch

from blockexp.expanders import Expander
from blockexp.io.load import ModelSpec, load_model
from blockexp.training.settings import Settings

__all__ = [
    "check_architecture",
    "export_dtype",
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
        from blockexp.io.tokenization import BYTE_VOCAB_SIZE

        vocab = base.get("vocab_size")
        if vocab is not None and vocab < BYTE_VOCAB_SIZE:
            raise ValueError(
                f"The inline base config has vocab_size={vocab}, too small for the built-in byte "
                f"tokenizer ({BYTE_VOCAB_SIZE} ids): set model.tokenizer to a tokenizer directory "
                f"or hub id, or vocab_size >= {BYTE_VOCAB_SIZE}."
            )
        return "byte"
    return base


def check_architecture(base: ModelSpec, trust_remote_code: bool = False) -> None:
    """Refuse an architecture blockexp has no :class:`~blockexp.layers.ArchSpec` for, from the
    base's config alone (no weights are read), naming it and the supported model types."""
    from blockexp.io.load import describe_spec, load_config
    from blockexp.layers import UnsupportedArchitectureError, get_arch

    try:
        get_arch(load_config(base, trust_remote_code=trust_remote_code))
    except UnsupportedArchitectureError as err:
        raise UnsupportedArchitectureError(f"base {describe_spec(base)}: {err}") from None


def load_expanded(
    settings: Settings, expander: Expander, attn_implementation: str | None = None
) -> tuple[Any, dict[str, int], dict[str, Any]]:
    """Load the base as training does and expand it: dtype from the precision policy, the
    expander applied, trainable parameters marked, frozen ones cast under ``lean``. The
    quantised-base policies (``lean-int8``, ``lean-nf4``) load exactly as ``lean`` here: the
    module quantises after taking the frozen fingerprint, and exports rebuild from this.

    Returns:
        ``(expansion, base_info, base_config)``: the :class:`~blockexp.expanders.Expansion`, the
        base depth and parameter count, and the base config as a dict.
    """
    from blockexp.training.precision import apply_precision_policy

    compute = settings.compute
    check_architecture(settings.base, settings.trust_remote_code)
    model = load_model(
        settings.base,
        dtype="bfloat16" if compute.lean else compute.dtype,
        trust_remote_code=settings.trust_remote_code,
        seed=settings.seed,
        attn_implementation=attn_implementation,
    )
    base_info = {
        "num_layers": int(model.config.num_hidden_layers),
        "params": sum(p.numel() for p in model.parameters()),
    }
    base_config = model.config.to_dict()
    expansion = expander.expand(model)
    expansion.freeze()
    apply_precision_policy(model, compute.precision_policy)
    return expansion, base_info, base_config


def export_dtype(precision_policy: str) -> torch.dtype | None:
    """The single dtype exports are stored in: bf16 under the ``lean`` policies (whose frozen
    weights are bf16, or quantised from bf16 and exported from the base's), else ``None`` (as
    trained)."""
    from blockexp.training.precision import is_lean

    return torch.bfloat16 if is_lean(precision_policy) else None
