"""Writing models out: checkpoint export to Hugging Face, and in-memory ``blockexp expand``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .checkpoint import MANIFEST_NAME
from .expanders import Expander
from .streaming import copy_tokenizer_files

__all__ = ["expand_in_memory", "export_checkpoint", "rebuild_from_checkpoint"]


def _copy_tokenizer(base: str, dest: Path) -> list[str]:
    """Copy tokenizer files from a local base directory (or fetch them for a hub id)."""
    local = Path(base).expanduser()
    if local.is_dir():
        return copy_tokenizer_files(local, dest)
    copied = []
    try:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(base).save_pretrained(dest)
        copied.append("tokenizer")
    except (OSError, ValueError):
        pass
    return copied


def expand_in_memory(
    base: str,
    out: str,
    expander: Expander,
    dtype: str = "auto",
    overwrite: bool = False,
    trust_remote_code: bool = False,
    max_shard_size: str = "5GB",
    step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Load ``base``, expand it in memory and write it to ``out`` atomically (safetensors,
    config, tokenizer files and manifest); the base directory is never written to.

    Args:
        base: base model directory or hub id.
        out: output directory (must not exist or be empty unless ``overwrite``).
        expander: the strategy.
        dtype: ``auto`` keeps the checkpoint's dtype.
        overwrite: replace an existing output directory.
        trust_remote_code: allow custom modelling code from the hub.
        max_shard_size: safetensors shard size.
        step: called with a description when each of the three steps starts.

    Returns:
        The manifest, plus ``tokenizer_files`` (what was copied).
    """
    from .checkpoint import atomic_output_dir, build_manifest, load_model

    step = step or (lambda description: None)
    protect = [base] if Path(base).expanduser().exists() else []
    with atomic_output_dir(out, protect=protect, overwrite=overwrite) as tmp:
        step("loading base model")
        model = load_model(base, dtype=dtype, trust_remote_code=trust_remote_code)
        base_layers = int(model.config.num_hidden_layers)
        base_params = sum(p.numel() for p in model.parameters())
        step(f"expanding with {expander!r}")
        expansion = expander.expand(model)
        step(f"writing {out}")
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size=max_shard_size)
        copied = _copy_tokenizer(base, tmp)
        manifest = build_manifest(expansion, expander, base, base_layers, base_params)
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return {**manifest, "tokenizer_files": copied}


def rebuild_from_checkpoint(state: dict[str, Any], name: str | Path = "checkpoint"):
    """Rebuild the plain ``transformers`` model of a ``blockexp fit`` checkpoint.

    Self-contained checkpoints (``save_frozen=true``): the base architecture is built from the
    stored base config without initialising its weights (untouched allocations cost no resident
    memory), the stored expander is applied (so the module tree matches training exactly) and all
    weights are assigned. Trainable-only checkpoints (the default): the base is loaded from its
    spec as in training, checked against the stored fingerprint of the frozen weights, expanded,
    and the trained parameters are assigned. The expander's
    :meth:`~blockexp.expanders.Expander.export_model` then gives the model to save.
    """
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    from .checkpoint import _config_from_dict, describe_spec
    from .expanders import build_expander
    from .loading import check_fingerprint, load_expanded

    info = state["blockexp"]
    expander = build_expander(info["manifest"]["expander"])
    prefix = "model."
    weights = {k[len(prefix) :]: v for k, v in state["state_dict"].items() if k.startswith(prefix)}
    fingerprint = info.get("frozen_fingerprint")
    if fingerprint is None:
        config = _config_from_dict(info["base_config"])
        with no_init_weights():
            model = AutoModelForCausalLM.from_config(config)
        expansion = expander.expand(model)
    else:
        hp = state.get("hyper_parameters", {})
        expansion, _, _ = load_expanded(hp, expander)
        check_fingerprint(expansion.model, fingerprint, describe_spec(hp["base"]))
        missing = sorted(n for n in expansion.trainable if n not in weights)
        if missing:
            raise ValueError(
                f"{name}: trainable parameters missing from the checkpoint: {missing[:3]}"
            )
    try:
        expansion.model.load_state_dict(weights, strict=fingerprint is None, assign=True)
    except RuntimeError as err:
        raise ValueError(f"{name}: weights do not match the stored model: {err}") from err
    expansion.model.tie_weights()
    model = expander.export_model(expansion.model)
    model.config.use_cache = True
    return model


def export_checkpoint(
    ckpt: str, out: str, tokenizer: str | None = None, overwrite: bool = False
) -> Path:
    """Export a Lightning training checkpoint as a Hugging Face directory (atomically).

    Args:
        ckpt: a ``.ckpt`` file written by ``blockexp fit``.
        out: output directory.
        tokenizer: tokenizer spec to save beside the model (default: the one used in training).
        overwrite: replace an existing output directory.
    """
    from .checkpoint import save_pretrained_atomic
    from .loading import export_dtype
    from .tokenization import load_tokenizer

    path = Path(ckpt).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {ckpt} does not exist.")
    state = torch.load(path, map_location="cpu", weights_only=True)
    info = state.get("blockexp")
    if info is None:
        raise ValueError(f"{ckpt} was not written by blockexp fit (no 'blockexp' entry).")
    model = rebuild_from_checkpoint(state, path)
    spec = tokenizer or info.get("tokenizer")
    tok = load_tokenizer(spec) if spec else None
    policy = state.get("hyper_parameters", {}).get("precision_policy", "full")
    return save_pretrained_atomic(
        model, out, tok, info["manifest"], overwrite=overwrite, dtype=export_dtype(policy)
    )
