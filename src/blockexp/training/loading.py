"""Building the training model (base, expander, precision policy) and its frozen-weight checks."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from blockexp.expanders import Expander
from blockexp.io.checkpoint import ModelSpec, load_model
from blockexp.training.settings import Settings

__all__ = [
    "IMPLAUSIBLE_WEIGHT",
    "IntegrityError",
    "check_architecture",
    "check_finite",
    "check_fingerprint",
    "check_stored_tensors",
    "export_dtype",
    "frozen_fingerprint",
    "load_expanded",
    "resolve_tokenizer_spec",
    "tensor_digest",
    "tensor_digests",
    "verify_checkpoint",
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


class IntegrityError(ValueError):
    """A tensor differs from the one a checkpoint recorded (changed base, corrupted file)."""


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes, dtype and shape (32 hex digits); any changed value changes it.

    SHA-256 runs at about 0.6 s per GiB on one core here (hashlib releases the GIL, so tensors
    are hashed on two threads).
    """
    tensor = tensor.detach()
    if hasattr(tensor, "full_tensor"):  # DTensor under FSDP2
        tensor = tensor.full_tensor()
    tensor = tensor.cpu().contiguous()
    digest = hashlib.sha256(f"{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    if tensor.numel():
        digest.update(tensor.view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:32]


def tensor_digests(tensors: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """:func:`tensor_digest` of every named tensor (two hashing threads)."""
    names = sorted(tensors)
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(names, pool.map(lambda n: tensor_digest(tensors[n]), names), strict=True))


def frozen_fingerprint(model: torch.nn.Module, trainable: frozenset[str]) -> dict[str, str]:
    """Digests of *every* frozen parameter of ``model`` (after the precision policy).

    Stored in trainable-only checkpoints, so that resuming or exporting with a base whose frozen
    weights changed in any value is refused, naming the tensor.
    """
    frozen = {n: p for n, p in model.named_parameters() if n not in trainable}
    return tensor_digests(frozen)


def check_fingerprint(
    model: torch.nn.Module, expected: dict, base: str, current: dict[str, str] | None = None
) -> None:
    """Raise :class:`IntegrityError` unless the frozen weights of ``model`` match
    :func:`frozen_fingerprint` ``expected`` (``current``: digests already computed)."""
    params = dict(model.named_parameters())
    if any(not isinstance(v, str) for v in expected.values()):  # pre-0.2 sum/abs-sum form
        raise IntegrityError(
            "The checkpoint carries a fingerprint of an earlier blockexp release (8 tensors by "
            "sum), which cannot vouch for the base; re-create it with this release, or train with "
            "save_frozen=true."
        )
    missing = sorted(set(expected) - set(params))
    if missing:
        raise IntegrityError(
            f"The checkpoint's frozen tensor {missing[0]} is not in the model built from base "
            f"'{base}' ({len(missing)} missing): another base or expander?"
        )
    got = current if current is not None else tensor_digests({n: params[n] for n in expected})
    for name in sorted(expected):
        if got.get(name) != expected[name]:
            raise IntegrityError(
                f"Frozen tensor {name} of base '{base}' differs from the one the checkpoint was "
                "trained on. Use the same base (--model.base / --base), or train with "
                "save_frozen=true to make checkpoints self-contained."
            )


def check_stored_tensors(
    state: Mapping[str, torch.Tensor], expected: dict[str, str], name: str
) -> None:
    """Raise :class:`IntegrityError` unless every tensor a checkpoint stored has the digest it
    recorded (``expected``: key -> digest, written beside the tensors)."""
    missing = sorted(k for k in expected if k not in state)
    if missing:
        raise IntegrityError(f"{name}: the checkpoint lacks stored tensor {missing[0]}.")
    got = tensor_digests({k: state[k] for k in expected})
    for key in sorted(expected):
        if got[key] != expected[key]:
            raise IntegrityError(
                f"{name}: stored tensor {key} does not match its recorded checksum: the file is "
                "corrupted."
            )


# No trained weight comes near this; a float32 whose exponent bits were all set is 3.4e38.
IMPLAUSIBLE_WEIGHT = 1e30


def check_finite(state: Mapping[str, torch.Tensor], name: str) -> None:
    """Raise :class:`IntegrityError` naming the first stored weight that holds a NaN, an infinity
    or a value beyond :data:`IMPLAUSIBLE_WEIGHT` in magnitude (a diverged run or a tampered
    file: exporting or resuming it would only spread it)."""
    for key in sorted(state):
        tensor = state[key]
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            continue
        values = tensor.detach()
        if hasattr(values, "full_tensor"):  # DTensor under FSDP2
            values = values.full_tensor()
        bad = ~torch.isfinite(values) | (values.abs() > IMPLAUSIBLE_WEIGHT)
        if bool(bad.any()):
            first = values.reshape(-1)[bad.reshape(-1)][0].item()
            raise IntegrityError(
                f"{name}: stored weight {key} holds {int(bad.sum())} non-finite or implausible "
                f"values (e.g. {first:g}): the run diverged or the file was altered. Use an "
                "earlier checkpoint."
            )


def verify_checkpoint(
    state: Mapping[str, Any], name: str, allow_unverified: bool = False, flag: str = ""
) -> None:
    """Check what a blockexp checkpoint stores before any of it is used: the checksum of every
    stored tensor (a checkpoint without checksums is refused unless ``allow_unverified``: one
    written by another tool, which ``flag`` lets through) and that every stored weight is
    finite."""
    info = state.get("blockexp") or {}
    tensors = state.get("state_dict") or {}
    weights = {k: v for k, v in tensors.items() if k.startswith("model.")}
    if info.get("stored_digest"):
        check_stored_tensors(tensors, info["stored_digest"], name)
        unrecorded = sorted(set(weights) - set(info["stored_digest"]))
        if unrecorded:
            raise IntegrityError(
                f"{name}: stored tensor {unrecorded[0]} has no recorded checksum "
                f"({len(unrecorded)} such): the file was altered."
            )
    elif not allow_unverified:
        raise IntegrityError(
            f"{name} records no checksums of its tensors, so nothing vouches for them. A "
            "checkpoint written by blockexp fit always has them; for one written by another tool, "
            f"pass {flag or 'the allow-unverified option'} to use it unverified."
        )
    check_finite(weights, name)


def check_architecture(base: ModelSpec, trust_remote_code: bool = False) -> None:
    """Refuse an architecture blockexp has no :class:`~blockexp.layers.ArchSpec` for, from the
    base's config alone (no weights are read), naming it and the supported model types."""
    from blockexp.io.checkpoint import describe_spec, load_config
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
