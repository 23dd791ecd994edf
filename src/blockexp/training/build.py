"""Building the model a training run trains: base, expander, attention, checks, quantising, sharding.

:func:`build_training_model` is what
:meth:`~blockexp.training.module.BlockExpansionModule.configure_model` does; what the base is
loaded as comes from :func:`blockexp.training.loading.load_expanded`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from blockexp.expanders import Expander
from blockexp.io import digests
from blockexp.training import loading
from blockexp.training.settings import Settings

__all__ = ["BuiltModel", "build_training_model", "compile_layers", "computes_in_half_precision"]


@dataclass
class BuiltModel:
    """What :func:`build_training_model` gives the module.

    Attributes:
        expansion: the :class:`~blockexp.expanders.Expansion` (its ``model`` is the one to train).
        base_info: the base depth and parameter count.
        base_config: the base config as a dict.
        frozen_digest: :func:`~blockexp.io.digests.frozen_fingerprint` of the frozen
            weights (``None`` with ``save_frozen``, whose checkpoints store them).
        base_record: :func:`~blockexp.io.base_record.base_record` of the base.
        quant_summary: what a quantised-base policy quantised (``None`` otherwise).
    """

    expansion: Any
    base_info: dict[str, int]
    base_config: dict[str, Any]
    frozen_digest: dict[str, str] | None
    base_record: dict[str, Any]
    quant_summary: Any = None


def build_training_model(
    settings: Settings, expander: Expander, trainer: Any = None, mesh: Any = None
) -> BuiltModel:
    """Load and expand the base (attention picked for ``trainer``), check the tokenizer of
    ``trainer``'s data module against it, fingerprint and record the base, then quantise the
    frozen linears (quantised policies), shard (``mesh``: FSDP2's device mesh) and compile."""
    from blockexp.io.base_record import base_record
    from blockexp.io.load import load_config
    from blockexp.training.attention import select_attn_implementation

    compute = settings.compute
    attn = compute.attn_implementation
    half = computes_in_half_precision(settings, trainer)
    if attn in (None, "auto"):  # the model class decides between sdpa and eager
        config = load_config(settings.base, trust_remote_code=settings.trust_remote_code)
        attn = select_attn_implementation(attn, config, half_precision=half)
    else:
        attn = select_attn_implementation(attn, half_precision=half)
    expansion, base_info, base_config = loading.load_expanded(settings, expander, attn)
    model = expansion.model
    if compute.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:  # older transformers
            model.gradient_checkpointing_enable({"use_reentrant": False})
    check_vocab(model, trainer)
    model.config.use_cache = False  # no KV cache while training
    model.train()  # from_pretrained returns eval mode; Lightning keeps module modes as found
    save_frozen = settings.output.save_frozen
    digest = None
    if not save_frozen:  # before sharding: plain tensors, no collectives
        digest = digests.frozen_fingerprint(model, expansion.trainable)
    # The base whole (config, weight files, tokenizer files): recorded in every checkpoint,
    # checked on resume and export. A self-contained checkpoint needs no base tensors.
    record = base_record(
        settings.base,
        settings.tokenizer,
        tensors=not save_frozen,
        trust_remote_code=settings.trust_remote_code,
    )
    built = BuiltModel(expansion, base_info, base_config, digest, record)
    from blockexp.training.quantize import QUANTISED_POLICIES, quantise_frozen_linears

    scheme = QUANTISED_POLICIES.get(compute.precision_policy)
    if scheme is not None:  # after the fingerprint, which vouches for the base's own weights
        built.quant_summary = quantise_frozen_linears(model, scheme)
        from lightning.pytorch.utilities import rank_zero_info

        rank_zero_info(f"precision_policy {compute.precision_policy}: {built.quant_summary}")
    if mesh is not None:
        from blockexp.training.distributed import shard_fsdp2

        shard_fsdp2(model, mesh["data_parallel"])
    if compute.compile_layers:
        compile_layers(model)
    return built


def compile_layers(model: torch.nn.Module) -> None:
    """``torch.compile`` every decoder layer in place (one graph per layer kind; layers differ
    in index and in being frozen, so dynamo's per-function cache must hold them all)."""
    from torch import _dynamo

    from blockexp.layers import get_arch

    layers = list(get_arch(model.config).layers(model))
    limit = 2 * len(layers) + 8
    _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, limit)
    for layer in layers:
        layer.compile()


def computes_in_half_precision(settings: Settings, trainer: Any = None) -> bool:
    """Whether the model computes in 16 bits on a CUDA device (so ``auto`` may pick
    flash-attn, which has no float32 kernels): the ``lean`` policy (bf16 autocast), a 16-bit
    base ``dtype`` or a 16-bit trainer precision; never when the trainer runs on the CPU."""
    if trainer is not None and trainer.strategy.root_device.type != "cuda":
        return False
    if settings.compute.lean:
        return True
    if str(settings.compute.dtype) in ("bfloat16", "float16"):
        return True
    precision = str(getattr(trainer, "precision", "") or "")
    return precision.startswith(("bf16", "16"))


def check_vocab(model: torch.nn.Module, trainer: Any = None) -> None:
    """Refuse a tokenizer (the one of ``trainer``'s data module) with more ids than the model's
    embedding has rows."""
    tokenizer = getattr(getattr(trainer, "datamodule", None), "tokenizer", None)
    if tokenizer is None:
        return
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} ids but the model's embedding has {rows} rows: "
            "they do not belong together. Use the base model's own tokenizer (leave "
            "model.tokenizer unset) or a base with a matching vocabulary."
        )
