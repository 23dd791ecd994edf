"""A quantised frozen base: the ``lean-int8`` and ``lean-nf4`` precision policies.

Under ``lean`` the frozen weights cost 2 bytes per parameter (bf16), and for LLaMA Pro 8.3B they
are 6.7B of the 8.3B parameters. ``lean-int8`` and ``lean-nf4`` store the frozen linear layers'
weights quantised with `torchao <https://github.com/pytorch/ao>`_ (extra ``lowmem``):

============  ==============================================  ========================
policy        frozen linear weights                           bytes per weight
============  ==============================================  ========================
lean          bf16                                            2
lean-int8     int8, one bf16 scale per output row              ~1 (+2 per row)
              (torchao ``Int8WeightOnlyConfig``)
lean-nf4      4-bit NormalFloat, blocks of 64, double-        ~0.52
              quantised scales (torchao ``NF4Tensor``, as
              QLoRA's NF4)
============  ==============================================  ========================

Everything else is as under ``lean``: trainable parameters are float32 masters with float32
gradients and optimizer state, compute runs under bf16 autocast, embeddings, norms and biases stay
bf16. Which linear layers are quantised: every frozen ``nn.Linear`` inside a decoder layer (found by
structure, :func:`blockexp.layers.get_arch`). The output head stays bf16, as bitsandbytes and
QLoRA keep it: with one loss chunk a quantised head is dequantised whole for the logits and again
for their gradient, and these temporaries cost more at the step's peak (the loss) than the head's
quantisation saves (measured: 0.305 GiB of temporaries at the peak of
``benchmarks/train_step.py``'s shape, where the head is 62.5 MiB in bf16). NF4 also needs a weight of a multiple of 16,384 elements (torchao's block
sizes); a weight that is not stays bf16 and is named in the summary.

This is a semantic change, like QLoRA's: the forward of the frozen layers uses the dequantised
weights, so the loss differs slightly from ``lean`` (docs/performance.md gives the difference after
200 steps). The frozen weights of checkpoints, of the fingerprint and of every export still come
from the base files: the fingerprint is taken before quantising, and exports rebuild the frozen
weights from the base (:meth:`blockexp.training.module.BlockExpansionModule.export`).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = [
    "QUANTISED_POLICIES",
    "QuantSummary",
    "is_quantised_policy",
    "quantise_frozen_linears",
    "quantised_parameters",
]

#: Precision policies with a quantised frozen base, and their scheme.
QUANTISED_POLICIES = {"lean-int8": "int8", "lean-nf4": "nf4"}

# torchao's NF4Tensor quantises in blocks of 64 and double-quantises the block scales in blocks of
# 256, so a weight must have a multiple of 64 * 256 elements.
_NF4_MULTIPLE = 64 * 256


def is_quantised_policy(policy: str | None) -> bool:
    return policy in QUANTISED_POLICIES


def require_torchao(what: str) -> None:
    """Raise a clear ImportError naming the extra when torchao is missing (``what``: the setting
    that needs it, e.g. ``model.optim.optimizer_state: int8``)."""
    if importlib.util.find_spec("torchao") is None:
        raise ImportError(
            f"{what} needs torchao: pip install -e '.[lowmem]' "
            "(or pip install 'torchao>=0.18,<0.19')."
        )


@dataclass
class QuantSummary:
    """What :func:`quantise_frozen_linears` did."""

    scheme: str
    quantised: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # frozen linears left in bf16, with the reason
    bytes_before: int = 0
    bytes_after: int = 0

    def __str__(self) -> str:
        text = (
            f"{self.scheme}: {len(self.quantised)} frozen linear weights quantised, "
            f"{self.bytes_before / 2**20:.1f} -> {self.bytes_after / 2**20:.1f} MiB"
        )
        if self.kept:
            text += f"; kept in bf16: {', '.join(self.kept[:4])}" + (
                f" (+{len(self.kept) - 4} more)" if len(self.kept) > 4 else ""
            )
        return text


def _frozen_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Frozen ``nn.Linear`` modules inside decoder layers (not the output head: see the module
    docstring)."""
    from blockexp.layers import get_arch

    arch = get_arch(model.config)
    names = {id(m): n for n, m in model.named_modules()}
    found: dict[str, nn.Linear] = {}
    for layer in arch.layers(model):
        for module in layer.modules():
            if isinstance(module, nn.Linear) and not module.weight.requires_grad:
                found[names[id(module)]] = module
    return found


def _bytes(tensor: torch.Tensor) -> int:
    """Storage bytes of a plain or torchao-quantised tensor (its inner tensors summed)."""
    inner = getattr(tensor, "__tensor_flatten__", None)
    if inner is not None and type(tensor) is not torch.Tensor and type(tensor) is not nn.Parameter:
        names, _ = inner()
        return sum(_bytes(getattr(tensor, n)) for n in names)
    return tensor.numel() * tensor.element_size()


class _DequantLinear(torch.autograd.Function):
    """``F.linear`` with a frozen quantised weight whose backward re-dequantises the weight.

    Through autograd, torchao's ``Int8Tensor`` linear would save its dequantised bf16 weight for
    the backward: a bf16 copy of every frozen layer the backward passes through, more memory than
    ``lean`` itself. This keeps a reference to the quantised weight instead and dequantises it
    again in the backward (the input gradient only; the weight is frozen), as torchao's
    ``linear_nf4`` does for NF4.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
        ctx.weight = weight
        return torch.nn.functional.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        weight = ctx.weight.dequantize().to(grad.dtype)
        return grad @ weight, None, None


class _QuantisedForward:
    """``forward`` of a frozen linear layer with a quantised weight: int8 through
    :class:`_DequantLinear`, NF4 through torchao's ``linear_nf4``; the input is cast to the
    autocast dtype first (the matmul's dtype under ``lean``)."""

    def __init__(self, module: nn.Linear, scheme: str) -> None:
        self.module = module
        self.scheme = scheme

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        weight, bias = self.module.weight, self.module.bias
        with torch.autocast(x.device.type, enabled=False):
            if self.scheme == "int8":
                return _DequantLinear.apply(x, weight, None if bias is None else bias.to(x.dtype))
            from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import linear_nf4

            out = linear_nf4(x, weight)
            return out if bias is None else out + bias.to(out.dtype)


def quantise_frozen_linears(model: nn.Module, scheme: str) -> QuantSummary:
    """Quantise the frozen linear weights of ``model`` in place (``scheme``: ``int8`` or ``nf4``).

    Call it after the expander has marked the trainable parameters and after the frozen
    fingerprint was taken, before sharding. Trainable parameters, embeddings, norms and biases are
    left alone.
    """
    if scheme not in ("int8", "nf4"):
        raise ValueError(f"Unknown quantisation scheme {scheme!r}; use 'int8' or 'nf4'.")
    summary = QuantSummary(scheme)
    targets = _frozen_linears(model)
    if scheme == "nf4":
        from torchao.quantization import to_nf4

        for name, module in targets.items():
            weight = module.weight
            if weight.numel() % _NF4_MULTIPLE:
                summary.kept.append(f"{name} ({weight.numel()} elements, not a multiple of 16384)")
                continue
            summary.bytes_before += _bytes(weight)
            with torch.no_grad():
                quantised = to_nf4(weight.detach().to(torch.bfloat16))
            module.weight = nn.Parameter(quantised, requires_grad=False)
            module.forward = _QuantisedForward(module, scheme)
            module.blockexp_quantised = scheme
            summary.bytes_after += _bytes(module.weight)
            summary.quantised.append(name)
        return summary

    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    chosen = {id(m) for m in targets.values()}
    summary.bytes_before = sum(_bytes(m.weight) for m in targets.values())
    with torch.no_grad():
        quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda m, _: id(m) in chosen)
    for name, module in targets.items():
        module.forward = _QuantisedForward(module, scheme)
        module.blockexp_quantised = scheme
        summary.bytes_after += _bytes(module.weight)
        summary.quantised.append(name)
    return summary


def quantised_parameters(model: nn.Module) -> set[nn.Parameter]:
    """The weights :func:`quantise_frozen_linears` quantised (FSDP2 leaves them unsharded)."""
    return {m.weight for m in model.modules() if getattr(m, "blockexp_quantised", None)}
