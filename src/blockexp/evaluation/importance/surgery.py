"""Temporary layer surgery for importance: remove a layer or insert a block, then restore exactly.

Removal and insertion are applied with the same plan machinery as the expanders
(:func:`blockexp.layers.surgery.apply_plan`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["insertion_plan", "removal_plan", "temporary_plan"]


def removal_plan(num_layers: int, layer: int):
    """The plan of the base model without ``layer``."""
    from blockexp.layers.plan import LayerSpec, Plan

    keep = [LayerSpec(0, (i,), "base") for i in range(num_layers) if i != layer]
    return Plan.from_groups(num_layers, [keep], strategy=f"remove({layer})")


def insertion_plan(num_layers: int, layer: int, init: str):
    """The plan with one block inserted after ``layer``: ``copy`` of it or ``mean`` of it and
    ``layer + 1``; the block is not zeroed (it changes the function)."""
    from blockexp.layers.plan import LayerSpec, Plan

    if init == "mean" and layer + 1 >= num_layers:
        raise ValueError(f"Layer {layer} is the last one: no upper neighbour to average with.")
    source = (layer,) if init == "copy" else (layer, layer + 1)
    specs = []
    for i in range(num_layers):
        specs.append(LayerSpec(0, (i,), "base"))
        if i == layer:
            specs.append(LayerSpec(0, source, init))
    return Plan.from_groups(num_layers, [specs], strategy=f"insert_{init}({layer})")


@contextlib.contextmanager
def temporary_plan(model: nn.Module, plan) -> Iterator[nn.Module]:
    """Apply ``plan`` to ``model`` for the duration of the ``with`` block, then restore it.

    The original layer modules, their ``layer_idx`` and the depth-dependent config fields
    (``num_hidden_layers``, ``layer_types``, ...) are put back even if the block raises.
    """
    from blockexp.layers.arch import get_arch
    from blockexp.layers.surgery import apply_plan

    arch = get_arch(model.config)
    original = arch.layers(model)
    snapshot = arch.config_snapshot(model.config)
    try:
        yield apply_plan(model, plan, arch)
    finally:
        arch.set_layers(model, original)
        for name, value in snapshot.items():
            setattr(model.config, name, value)
        for index, layer in enumerate(original):
            arch.renumber(layer, index)
