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
structure, :func:`blockexp.layers.get_arch`) and the output head when it is frozen and not tied to
the input embeddings. NF4 also needs a weight of a multiple of 16,384 elements (torchao's block
sizes); a weight that is not stays bf16 and is named in the summary.

This is a semantic change, like QLoRA's: the forward of the frozen layers uses the dequantised
weights, so the loss differs slightly from ``lean`` (docs/performance.md gives the difference after
200 steps). The frozen weights of checkpoints, of the fingerprint and of every export still come
from the base files: the fingerprint is taken before quantising, and exports rebuild the frozen
weights from the base (:meth:`blockexp.module.BlockExpansionModule.export`).
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


def require_torchao(policy: str) -> None:
    """Raise a clear ImportError naming the extra when torchao is missing."""
    if importlib.util.find_spec("torchao") is None:
        raise ImportError(
            f"precision_policy {policy} stores the frozen base quantised with torchao: "
            "pip install -e '.[lowmem]' (or pip install 'torchao>=0.18,<0.19')."
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
    """Frozen ``nn.Linear`` modules inside decoder layers, plus an untied frozen output head."""
    from .layers import get_arch

    arch = get_arch(model.config)
    names = {id(m): n for n, m in model.named_modules()}
    found: dict[str, nn.Linear] = {}
    for layer in arch.layers(model):
        for module in layer.modules():
            if isinstance(module, nn.Linear) and not module.weight.requires_grad:
                found[names[id(module)]] = module
    head = model.get_output_embeddings()
    embed = model.get_input_embeddings()
    if (
        isinstance(head, nn.Linear)
        and not head.weight.requires_grad
        and (embed is None or head.weight is not embed.weight)
    ):
        found[names[id(head)]] = head
    return found


def _bytes(tensor: torch.Tensor) -> int:
    """Storage bytes of a plain or torchao-quantised tensor (its inner tensors summed)."""
    inner = getattr(tensor, "__tensor_flatten__", None)
    if inner is not None and type(tensor) is not torch.Tensor and type(tensor) is not nn.Parameter:
        names, _ = inner()
        return sum(_bytes(getattr(tensor, n)) for n in names)
    return tensor.numel() * tensor.element_size()


class _NF4Forward:
    """``forward`` of a linear layer whose weight is an ``NF4Tensor``: torchao's ``linear_nf4``
    (dequantise to the input's dtype, matmul; its backward gives the input gradient only)."""

    def __init__(self, module: nn.Linear) -> None:
        self.module = module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from torchao.quantization import NF4Tensor  # noqa: F401  (registers the subclass ops)
        from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import linear_nf4

        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        out = linear_nf4(x, self.module.weight)
        if self.module.bias is not None:
            out = out + self.module.bias.to(out.dtype)
        return out


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
            module.forward = _NF4Forward(module)
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
        module.blockexp_quantised = scheme
        summary.bytes_after += _bytes(module.weight)
        summary.quantised.append(name)
    return summary


def quantised_parameters(model: nn.Module) -> set[nn.Parameter]:
    """The weights :func:`quantise_frozen_linears` quantised (FSDP2 leaves them unsharded)."""
    return {m.weight for m in model.modules() if getattr(m, "blockexp_quantised", None)}
