"""Multi-GPU set-up: FSDP2 sharding of an expanded model, one unit per decoder layer."""

from __future__ import annotations

from torch import nn

from .layers import get_arch

__all__ = ["shard_fsdp2"]


def shard_fsdp2(model: nn.Module, mesh) -> nn.Module:
    """Shard ``model`` with FSDP2: one ``fully_shard`` unit per decoder layer, then the root.

    Decoder layers are found by structure (:func:`blockexp.layers.get_arch`). Each layer is either
    wholly frozen or wholly trainable under a plan, so every unit has one ``requires_grad`` and,
    with the ``lean`` policy, one dtype.
    """
    from torch.distributed.fsdp import fully_shard

    for layer in get_arch(model.config).layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model
