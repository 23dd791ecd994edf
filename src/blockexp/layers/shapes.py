"""Tensor names and shapes from ``config.json`` alone: a checkpoint's header without the checkpoint.

Every supported family declares a :class:`ParamLayout` in its :class:`~blockexp.layers.ArchSpec`
(:mod:`blockexp.layers.families`): which linear maps carry biases, whether q/k/v and gate/up are
fused, how big the q/k norms are, how a sparse FFN stores its experts, and the defaults its
``transformers`` config class gives the fields that a ``config.json`` may omit. From these,
:func:`param_shapes` lists every tensor a ``save_pretrained`` checkpoint of that config holds,
named as the checkpoint names it (Mixtral's experts as ``block_sparse_moe.experts.<e>.w1``, the
layout on the hub and what ``transformers`` 5 writes), so that ``plan`` can count parameters
without torch, transformers or weights (tested tensor by tensor against saved checkpoints and,
for the defaults, against the models ``transformers`` builds).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from blockexp.layers.arch import UnsupportedArchitectureError, get_arch

__all__ = ["ParamLayout", "param_shapes", "resolve_config"]

#: Config fields every layout reads; ``None`` for the two derived ones (``head_dim`` is
#: ``hidden_size // num_attention_heads``, ``num_key_value_heads`` is ``num_attention_heads``).
_COMMON_DEFAULTS: dict[str, Any] = {
    "head_dim": None,
    "num_key_value_heads": None,
    "tie_word_embeddings": False,
}
#: The sizes every :attr:`ParamLayout.defaults` gives (the config class's default model).
_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads")


@dataclass(frozen=True)
class ParamLayout:
    """How one family's tensors follow from its config (the ``transformers`` 5 modelling code).

    Attributes:
        defaults: the values the family's config class gives omitted fields: at least
            ``vocab_size``, ``hidden_size``, ``intermediate_size`` and ``num_attention_heads``,
            and every field below that names a config field. ``head_dim`` and
            ``num_key_value_heads`` default to ``hidden_size // num_attention_heads`` and
            ``num_attention_heads`` unless given here; ``tie_word_embeddings`` to False.
        qkv_bias: whether q/k/v projections have biases: a bool, or the config field saying so.
        o_bias: the same for the attention output projection.
        mlp_bias: the same for the dense FFN's projections.
        fused_qkv: one ``qkv_proj`` instead of ``q_proj``/``k_proj``/``v_proj`` (Phi-3).
        fused_gate_up: one ``gate_up_proj`` instead of ``gate_proj``/``up_proj`` (Phi-3).
        qk_norm_all_heads: the q/k norms (when :attr:`ArchSpec.layer_norms` lists them) span all
            heads (OLMo 2) instead of one head.
        num_experts: config field with the expert count of a sparse FFN (``None``: dense).
        moe_path: where the sparse FFN lives inside a layer in the checkpoint.
        expert_projections: names of an expert's gate, up and down projections.
        expert_size: config field with an expert's intermediate size.
        shared_expert: config field with the shared expert's intermediate size (Qwen2-MoE),
            whose output is scaled by ``<moe_path>.shared_expert_gate``.
    """

    defaults: Mapping[str, Any]
    qkv_bias: bool | str = False
    o_bias: bool | str = False
    mlp_bias: bool | str = False
    fused_qkv: bool = False
    fused_gate_up: bool = False
    qk_norm_all_heads: bool = False
    num_experts: str | None = None
    moe_path: str = "mlp"
    expert_projections: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")
    expert_size: str = "moe_intermediate_size"
    shared_expert: str | None = None

    def __post_init__(self) -> None:
        named = [v for v in (self.qkv_bias, self.o_bias, self.mlp_bias) if isinstance(v, str)]
        named += [v for v in (self.num_experts, self.shared_expert) if v is not None]
        if self.num_experts is not None:
            named.append(self.expert_size)
        missing = [n for n in (*_SIZES, *named) if n not in self.defaults]
        if missing:
            raise ValueError(f"ParamLayout.defaults lacks {missing}.")

    def flag(self, config: Mapping[str, Any], value: bool | str) -> bool:
        """A bias switch (:attr:`qkv_bias`, ...) read from a resolved config."""
        return bool(config[value]) if isinstance(value, str) else value


def _layout(config: Mapping[str, Any]) -> tuple[Any, ParamLayout]:
    if "model_type" not in config:
        raise UnsupportedArchitectureError("config.json has no 'model_type'.")
    arch = get_arch(config["model_type"])
    if arch.shapes is None:
        raise UnsupportedArchitectureError(
            f"The '{arch.model_type}' ArchSpec declares no ParamLayout (ArchSpec.shapes), so its "
            "tensor shapes cannot be computed from config.json."
        )
    return arch, arch.shapes


def resolve_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` (a ``config.json`` dict) with every field :func:`param_shapes` reads filled in
    as the family's ``transformers`` config class fills it (a ``null`` counts as omitted).

    Raises:
        UnsupportedArchitectureError: if the family declares no :class:`ParamLayout`.
        ValueError: if a size in the config is not a positive integer.
    """
    _, layout = _layout(config)
    given = {k: v for k, v in config.items() if v is not None}
    out = {**_COMMON_DEFAULTS, **layout.defaults, **given}
    _check_sizes(out, _SIZES)
    if out["head_dim"] is None:
        out["head_dim"] = out["hidden_size"] // out["num_attention_heads"]
    if out["num_key_value_heads"] is None:
        out["num_key_value_heads"] = out["num_attention_heads"]
    _check_sizes(out, ("head_dim", "num_key_value_heads"))
    return out


def _check_sizes(config: Mapping[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        value = config.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"config.json: '{name}' must be a positive integer, got {value!r}.")


def _linear(out: dict, name: str, rows: int, cols: int, bias: bool) -> None:
    out[f"{name}.weight"] = (rows, cols)
    if bias:
        out[f"{name}.bias"] = (rows,)


def _mlp(out: dict, prefix: str, hidden: int, inter: int, bias: bool, layout: ParamLayout) -> None:
    if layout.fused_gate_up:
        _linear(out, f"{prefix}gate_up_proj", 2 * inter, hidden, bias)
    else:
        _linear(out, f"{prefix}gate_proj", inter, hidden, bias)
        _linear(out, f"{prefix}up_proj", inter, hidden, bias)
    _linear(out, f"{prefix}down_proj", hidden, inter, bias)


def _sparse_layers(arch: Any, layout: ParamLayout, c: Mapping[str, Any], n: int) -> set[int]:
    if layout.num_experts is None or int(c[layout.num_experts]) <= 0:
        return set()
    if arch.dense_layers_list is None:
        return set(range(n))
    dense = arch.dense_layers(SimpleNamespace(**c), n)
    return set(range(n)) - (dense or set())


def param_shapes(config: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor a checkpoint of ``config`` stores, by checkpoint name, with its shape.

    ``config`` is a ``config.json`` dict of a family with a :class:`ParamLayout`. The LM head is
    left out when the config ties it to the token embedding (as ``save_pretrained`` does).

    Raises:
        UnsupportedArchitectureError: naming the model type and the supported ones.
        ValueError: if a size in the config is not a positive integer.
    """
    arch, layout = _layout(config)
    c = resolve_config(config)
    _check_sizes(c, ("num_hidden_layers",))
    hidden, hd = c["hidden_size"], c["head_dim"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    out: dict[str, tuple[int, ...]] = {
        ".".join(arch.embed_path) + ".weight": (c["vocab_size"], hidden)
    }
    attn = arch.attention_path + "."
    qkv_bias, o_bias = layout.flag(c, layout.qkv_bias), layout.flag(c, layout.o_bias)
    mlp_bias = layout.flag(c, layout.mlp_bias)
    q_norm, k_norm = (q, kv) if layout.qk_norm_all_heads else (hd, hd)
    norm_sizes = {f"{attn}q_norm": q_norm, f"{attn}k_norm": k_norm}
    n = c["num_hidden_layers"]
    sparse = _sparse_layers(arch, layout, c, n)
    for i in range(n):
        p = f"{arch.layer_prefix}{i}."
        for norm in arch.layer_norms:
            out[f"{p}{norm}.weight"] = (norm_sizes.get(norm, hidden),)
        if layout.fused_qkv:
            _linear(out, f"{p}{attn}qkv_proj", q + 2 * kv, hidden, qkv_bias)
        else:
            for proj, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
                _linear(out, f"{p}{attn}{proj}", rows, hidden, qkv_bias)
        _linear(out, f"{p}{attn}o_proj", hidden, q, o_bias)
        if i not in sparse:
            _mlp(out, f"{p}{arch.mlp_path}.", hidden, c["intermediate_size"], mlp_bias, layout)
            continue
        moe = f"{p}{layout.moe_path}."
        experts, size = int(c[layout.num_experts]), int(c[layout.expert_size])
        _linear(out, f"{moe}gate", experts, hidden, False)
        gate, up, down = layout.expert_projections
        for e in range(experts):
            _linear(out, f"{moe}experts.{e}.{gate}", size, hidden, False)
            _linear(out, f"{moe}experts.{e}.{up}", size, hidden, False)
            _linear(out, f"{moe}experts.{e}.{down}", hidden, size, False)
        if layout.shared_expert is not None:
            shared = int(c[layout.shared_expert])
            _mlp(out, f"{moe}shared_expert.", hidden, shared, False, layout)
            _linear(out, f"{moe}shared_expert_gate", 1, hidden, False)
    out[".".join(arch.final_norm_path) + ".weight"] = (hidden,)
    if not c["tie_word_embeddings"]:
        out[".".join(arch.lm_head_path) + ".weight"] = (c["vocab_size"], hidden)
    return out
