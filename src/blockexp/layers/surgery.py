"""Block surgery: apply a plan to a loaded model in memory (copy, average, zero, renumber)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from blockexp.layers.arch import ArchSpec, get_arch
from blockexp.layers.plan import LayerSpec, Plan, PlanError

__all__ = ["apply_plan", "average_layers", "zero_linears", "zero_residual_writers"]


@torch.no_grad()
def zero_linears(linears: list[nn.Linear]) -> None:
    """Zero the weight and bias of each linear map."""
    for linear in linears:
        linear.weight.zero_()
        if getattr(linear, "bias", None) is not None:
            linear.bias.zero_()


@torch.no_grad()
def zero_residual_writers(layer: nn.Module, arch: ArchSpec) -> None:
    """Zero what writes into the residual stream: the weights and biases of the writer linears
    and, in a sparse MoE layer, every expert's (and the shared expert's) down projection."""
    for tensor in arch.residual_tensors(layer):
        tensor.zero_()


@torch.no_grad()
def average_layers(layers: list[nn.Module]) -> nn.Module:
    """A new layer whose every parameter and buffer is the element-wise mean of ``layers``.

    The mean is computed in float32 and cast back to each tensor's dtype.
    """
    result = copy.deepcopy(layers[0])
    others = [dict(layer.named_parameters()) for layer in layers[1:]]
    names = {name: tuple(p.shape) for name, p in result.named_parameters()}
    for i, other in enumerate(others, 1):
        if {name: tuple(p.shape) for name, p in other.items()} != names:
            raise PlanError(
                "Cannot average layers of different structure (e.g. a dense and a sparse MoE "
                f"layer): layer {i} of the group has other parameters than the first. Use "
                "init='copy' or a plan whose averaged neighbours have the same structure."
            )
    for name, param in result.named_parameters():
        if param.is_meta:
            continue
        acc = param.detach().to(torch.float32).clone()
        for other in others:
            acc += other[name].detach().to(torch.float32)
        param.copy_((acc / len(layers)).to(param.dtype))
    return result


def apply_plan(model: nn.Module, plan: Plan, arch: ArchSpec | None = None) -> nn.Module:
    """Rebuild the decoder stack of ``model`` according to ``plan`` (in place).

    Kept base layers are reused as they are (no copy); new layers are deep copies or means of
    their sources, with residual writers zeroed when the spec says so. Attention ``layer_idx`` is
    renumbered, and ``config.num_hidden_layers`` and per-layer config lists follow the plan.

    Returns:
        The same ``model`` object.
    """
    arch = arch or get_arch(model.config)
    layers = arch.layers(model)
    if len(layers) != plan.base_num_layers:
        raise PlanError(
            f"The plan was made for {plan.base_num_layers} layers but the model has {len(layers)}."
        )
    old = list(layers)
    new: list[nn.Module] = []
    for spec in plan.layers:
        layer = _build_layer(old, spec)
        if spec.zero_out:
            zero_residual_writers(layer, arch)
        arch.renumber(layer, spec.index)
        new.append(layer)
    arch.set_layers(model, nn.ModuleList(new))
    _update_config(model.config, plan, arch)
    return model


def _build_layer(old: list[nn.Module], spec: LayerSpec) -> nn.Module:
    if spec.init == "base":
        return old[spec.source[0]]
    if spec.init == "copy":
        return copy.deepcopy(old[spec.source[0]])
    return average_layers([old[i] for i in spec.source])


def _update_config(config, plan: Plan, arch: ArchSpec) -> None:
    # Per-layer lists (a new layer behaves like its first source layer, e.g. same attention
    # type), count-style boundaries (Qwen2 max_window_layers) and num_hidden_layers.
    arch.update_config(config, plan)
