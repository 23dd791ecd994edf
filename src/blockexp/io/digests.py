"""Tensor digests and checkpoint integrity: frozen-weight fingerprints, checksums, finite values."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch: imported where a tensor is hashed or checked
    import torch

__all__ = [
    "IMPLAUSIBLE_WEIGHT",
    "IntegrityError",
    "check_finite",
    "check_fingerprint",
    "check_stored_tensors",
    "frozen_fingerprint",
    "tensor_digest",
    "tensor_digests",
    "verify_checkpoint",
]


class IntegrityError(ValueError):
    """A tensor differs from the one a checkpoint recorded (changed base, corrupted file)."""


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes, dtype and shape (32 hex digits); any changed value changes it.

    SHA-256 runs at about 0.6 s per GiB on one core here (hashlib releases the GIL, so tensors
    are hashed on two threads).
    """
    import torch

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
    import torch

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
