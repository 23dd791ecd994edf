"""Rebuilding a trained model from its base: load, expand, check the frozen weights, assign trained.

Used where the trained model's frozen weights are not at hand as the base has them: exporting a
trainable-only checkpoint (:func:`blockexp.training.export.rebuild_from_checkpoint`) and exporting
at the end of a run whose frozen weights are quantised in memory (``lean-int8``, ``lean-nf4``).
"""

from __future__ import annotations

from typing import Any

import torch

from blockexp.expanders import Expander
from blockexp.io.digests import check_fingerprint
from blockexp.training.loading import load_expanded
from blockexp.training.settings import Settings

__all__ = ["assign_weights", "rebuild_trained", "trained_state"]


def rebuild_trained(
    settings: Settings,
    expander: Expander,
    fingerprint: dict[str, str],
    trained: dict[str, torch.Tensor],
    name: str = "the trained model",
) -> Any:
    """Load the base as training did (:func:`~blockexp.training.loading.load_expanded`), expand
    it, check its frozen weights against ``fingerprint`` and assign the ``trained`` parameters
    (every trainable one must be there); returns the :class:`~blockexp.expanders.Expansion`.

    Raises:
        IntegrityError: a frozen weight of the base differs from the fingerprint.
        ValueError: trainable parameters missing from ``trained``, or tensors that do not fit.
    """
    from blockexp.io.load import describe_spec

    expansion, _, _ = load_expanded(settings, expander)
    check_fingerprint(expansion.model, fingerprint, describe_spec(settings.base))
    missing = sorted(n for n in expansion.trainable if n not in trained)
    if missing:
        raise ValueError(f"{name}: trainable parameters missing from the checkpoint: {missing[:3]}")
    assign_weights(expansion.model, trained, name)
    return expansion


def assign_weights(
    model: torch.nn.Module, weights: dict[str, torch.Tensor], name: str, strict: bool = False
) -> None:
    """Assign ``weights`` to ``model`` (every one of them must be a tensor of the model; with
    ``strict`` they must also be all of them) and tie the model's weights again.

    Raises:
        ValueError: naming ``name``, for tensors that do not fit or are not in the model.
    """
    try:
        result = model.load_state_dict(weights, strict=strict, assign=True)
    except RuntimeError as err:
        raise ValueError(f"{name}: weights do not match the stored model: {err}") from err
    if result.unexpected_keys:
        raise ValueError(
            f"{name}: trained parameters not in the rebuilt model: {result.unexpected_keys[:3]}"
        )
    model.tie_weights()


def trained_state(model: torch.nn.Module, trainable: frozenset[str]) -> dict[str, torch.Tensor]:
    """The ``trainable`` parameters of ``model`` as whole CPU tensors (a collective under FSDP2:
    every rank must call it)."""
    trained = {}
    for name, param in model.named_parameters():
        if name in trainable:
            tensor = param.detach()
            if hasattr(tensor, "full_tensor"):  # DTensor under FSDP2
                tensor = tensor.full_tensor()
            trained[name] = tensor.cpu()
    return trained
