"""Multi-GPU set-up: FSDP2 sharding of an expanded model, one unit per decoder layer."""

from __future__ import annotations

import torch
from torch import nn

from blockexp.layers import get_arch

__all__ = ["shard_fsdp2"]


def shard_fsdp2(model: nn.Module, mesh) -> nn.Module:
    """Shard ``model`` with FSDP2: one ``fully_shard`` unit per decoder layer, then the root.

    Decoder layers are found by structure (:func:`blockexp.layers.get_arch`). Each layer is either
    wholly frozen or wholly trainable under a plan, so every unit has one ``requires_grad`` and,
    with the ``lean`` policy, one dtype.
    """
    from torch.distributed.fsdp import fully_shard

    from blockexp.training.quantize import quantised_parameters

    # torchao's quantised tensors (lean-int8, lean-nf4) cannot be sharded by FSDP2 here (Int8Tensor
    # has no split; NF4Tensor's all-gather extension fails on torch 2.13): they stay whole on every
    # rank, frozen, so they need no gradient reduction; fully_shard then leaves them where they are.
    ignored = quantised_parameters(model)
    kwargs = {"ignored_params": ignored} if ignored else {}
    if ignored:
        device = torch.device(mesh.device_type)
        if device.type != "cpu":
            device = torch.device(
                device.type, torch.get_device_module(device.type).current_device()
            )
        for module in model.modules():
            if getattr(module, "blockexp_quantised", None) and module.weight.device != device:
                module.to(device)
    for layer in get_arch(model.config).layers(model):
        fully_shard(layer, mesh=mesh, **kwargs)
    fully_shard(model, mesh=mesh, **kwargs)
    return model
