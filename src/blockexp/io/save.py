"""Saving a model (weights, config, tokenizer, manifest) into an atomic output directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from blockexp.io.load import ModelSpec
from blockexp.io.manifest import write_manifest
from blockexp.io.outputs import atomic_output_dir

if TYPE_CHECKING:  # torch and transformers: imported where a model is saved, not to plan
    import torch
    from transformers import PreTrainedModel

__all__ = ["WEIGHTS_FORMATS", "full_state_dict", "save_pretrained_atomic"]

WEIGHTS_FORMATS = ("safetensors", "pytorch_bin")


def save_pretrained_atomic(
    model: PreTrainedModel,
    out: str | os.PathLike,
    tokenizer=None,
    manifest: dict[str, Any] | None = None,
    protect: list[ModelSpec | os.PathLike] = (),
    overwrite: bool = False,
    max_shard_size: str | int = "5GB",
    dtype: torch.dtype | None = None,
    weights_format: str = "safetensors",
    keep_away: list[str | os.PathLike] = (),
    overwrite_hint: str = "pass --overwrite true",
    base: ModelSpec | None = None,
    tokenizer_from_base: bool = True,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Save ``model``, its config, ``tokenizer`` and the manifest, atomically (the rules of
    :class:`~blockexp.io.outputs.atomic_output_dir`).

    ``state_dict``: the weights to write instead of ``model.state_dict()`` (e.g. the full
    tensors gathered from an FSDP2-sharded model on every rank, :func:`full_state_dict`); an
    FSDP2-sharded ``model`` without it is gathered here (a collective: every rank must call).

    ``base`` (a local directory; hub ids and inline configs have no files) lends its other
    non-weight files (``generation_config.json``, README, chat template, ...; its tokenizer files
    too when ``tokenizer_from_base``), and ``config.json`` / ``tokenizer_config.json`` are made
    readable by transformers 4.x as well (:func:`blockexp.io.portable.finish_output`).

    ``dtype`` stores every floating-point tensor in that dtype (one tensor at a time; tensors
    already in it are not copied), e.g. bf16 for a model trained with frozen bf16 weights and fp32
    trainable ones, so the checkpoint has one dtype, as its config says.

    ``weights_format`` is ``safetensors`` (``save_pretrained``'s sharded safetensors) or
    ``pytorch_bin``: one ``pytorch_model.bin`` holding a plain dict of tensors (loadable with
    ``torch.load(weights_only=True)``), the file TRACE's inference scripts read.
    """
    import torch

    if weights_format not in WEIGHTS_FORMATS:
        raise ValueError(f"weights_format must be one of {WEIGHTS_FORMATS}, got {weights_format!r}")
    if state_dict is None:
        state_dict = full_state_dict(model)
    with atomic_output_dir(out, protect, overwrite, keep_away, overwrite_hint) as tmp:
        kwargs: dict[str, Any] = {} if state_dict is None else {"state_dict": state_dict}
        if dtype is not None:
            kwargs["state_dict"] = {
                k: v.to(dtype) if v.is_floating_point() else v
                for k, v in (state_dict if state_dict is not None else model.state_dict()).items()
            }
        if weights_format == "pytorch_bin":
            state = kwargs.get("state_dict") or model.state_dict()
            tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
            torch.save(tensors, tmp / "pytorch_model.bin")
            model.config.dtype = str(dtype or model.dtype).split(".")[1]
            model.config.architectures = [type(model).__name__]
            model.config.save_pretrained(tmp)
            if getattr(model, "generation_config", None) is not None:
                model.generation_config.save_pretrained(tmp)
        else:
            model.save_pretrained(
                tmp, safe_serialization=True, max_shard_size=max_shard_size, **kwargs
            )
            _unprefix_fsdp_architectures(tmp / "config.json")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        from blockexp.io.portable import finish_output

        finish_output(tmp, base, tokenizer_from_base)
        if manifest is not None:
            write_manifest(tmp, manifest)
    return Path(out).expanduser().resolve()


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The full (unsharded) state dict of an FSDP2-sharded ``model`` on the CPU, or ``None`` when
    no parameter is sharded (a DTensor). Gathering is a collective: every rank must call it, in
    the same order, even if only rank 0 writes the result."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return None
    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return None
    out = {}
    for key, value in model.state_dict().items():
        if isinstance(value, DTensor):
            value = value.full_tensor()
        out[key] = value.detach().cpu()
    return out


def _unprefix_fsdp_architectures(config_file: Path) -> None:
    """FSDP2 renames a sharded model's class (``FSDPLlamaForCausalLM``), which
    ``save_pretrained`` records as the architecture; write the model's own class name."""
    if not config_file.is_file():
        return
    config = json.loads(config_file.read_text())
    names = config.get("architectures") or []
    fixed = [n[len("FSDP") :] if n.startswith("FSDP") else n for n in names]
    if fixed != names:
        config["architectures"] = fixed
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
