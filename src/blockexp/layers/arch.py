"""Per-architecture structure: decoder layers, residual writers and per-layer config fields.

Layers are found by *structure*: each supported ``model_type`` names the attribute path of its
decoder-layer ``ModuleList`` and, inside one decoder layer, the attribute paths of the two linear
maps that write into the residual stream (attention output and FFN output). Nothing here matches
parameter names by substring; on-disk tensor names are parsed with an exact prefix
(``model.layers.<i>.``) derived from the same attribute path.

Supported (``transformers`` 5.x): ``llama``, ``mistral`` (global ``sliding_window``, nothing per
layer) and ``qwen2`` (q/k/v biases; per-layer ``layer_types`` derived from ``use_sliding_window``,
``sliding_window`` and ``max_window_layers``). When the depth changes,
:meth:`ArchSpec.update_config` rewrites every per-layer field so that each new layer keeps the
attention type of its first source layer and the count-style boundary (``max_window_layers``)
still separates the same layers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import nn

from .plan import PlanError

if TYPE_CHECKING:
    from .plan import Plan

__all__ = [
    "ArchSpec",
    "UnsupportedArchitectureError",
    "get_arch",
    "register_arch",
    "supported_model_types",
]


class UnsupportedArchitectureError(ValueError):
    """The model's architecture has no :class:`ArchSpec`."""


@dataclass(frozen=True)
class ArchSpec:
    """Structural description of one decoder-only architecture.

    Attributes:
        model_type: ``config.model_type`` this spec applies to.
        layers_path: attribute path from the ``*ForCausalLM`` module to the decoder ``ModuleList``.
        residual_writers: attribute paths, inside one decoder layer, of the ``nn.Linear`` modules
            whose outputs are added to the residual stream. Zeroing them (weight and bias) turns a
            pre-norm block into an exact identity.
        layer_norms: attribute paths, inside one decoder layer, of its normalisation modules.
        final_norm_path: attribute path from the causal LM to the final norm.
        embed_path: attribute path from the causal LM to the token embedding.
        lm_head_path: attribute path from the causal LM to the output projection.
        attention_path: attribute path, inside one decoder layer, of the attention module (its
            ``layer_idx`` selects the KV-cache slot and must be renumbered after surgery).
        mlp_path: attribute path, inside one decoder layer, of the feed-forward module.
        per_layer_config_lists: config attributes that hold one entry per decoder layer.
        layer_count_boundaries: config attributes that hold a layer *count* splitting the stack
            in two (Qwen2's ``max_window_layers``: layers ``>=`` it use sliding attention). After
            surgery each becomes the number of new layers whose first source lay below it.
    """

    model_type: str
    layers_path: tuple[str, ...] = ("model", "layers")
    residual_writers: tuple[str, ...] = ("self_attn.o_proj", "mlp.down_proj")
    layer_norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
    final_norm_path: tuple[str, ...] = ("model", "norm")
    embed_path: tuple[str, ...] = ("model", "embed_tokens")
    lm_head_path: tuple[str, ...] = ("lm_head",)
    attention_path: str = "self_attn"
    mlp_path: str = "mlp"
    per_layer_config_lists: tuple[str, ...] = ("layer_types",)
    layer_count_boundaries: tuple[str, ...] = ()

    # -- in-memory access -------------------------------------------------------------------
    def layers(self, model: nn.Module) -> nn.ModuleList:
        """Return the decoder-layer ``ModuleList`` of ``model`` (checked to be one)."""
        module = _get_path(model, self.layers_path, self.model_type)
        if not isinstance(module, nn.ModuleList):
            raise UnsupportedArchitectureError(
                f"{self.model_type}: expected an nn.ModuleList at "
                f"'{'.'.join(self.layers_path)}', found {type(module).__name__}."
            )
        return module

    def set_layers(self, model: nn.Module, layers: nn.ModuleList) -> None:
        """Replace the decoder-layer ``ModuleList`` of ``model``."""
        parent = _get_path(model, self.layers_path[:-1], self.model_type)
        setattr(parent, self.layers_path[-1], layers)

    def residual_linears(self, layer: nn.Module) -> list[nn.Linear]:
        """The linear maps of one decoder layer that write into the residual stream."""
        out = []
        for path in self.residual_writers:
            module = _get_path(layer, tuple(path.split(".")), self.model_type)
            if not isinstance(module, nn.Linear):
                raise UnsupportedArchitectureError(
                    f"{self.model_type}: expected nn.Linear at '{path}' of a decoder layer, "
                    f"found {type(module).__name__}."
                )
            out.append(module)
        return out

    def mlp(self, layer: nn.Module) -> nn.Module:
        """The feed-forward module of one decoder layer."""
        return _get_path(layer, tuple(self.mlp_path.split(".")), self.model_type)

    @property
    def mlp_residual_writers(self) -> tuple[str, ...]:
        """Attribute paths, inside the feed-forward module, of its residual writers
        (``down_proj`` for Llama): the residual writers that lie under :attr:`mlp_path`."""
        prefix = self.mlp_path + "."
        return tuple(w[len(prefix) :] for w in self.residual_writers if w.startswith(prefix))

    def mlp_residual_linears(self, mlp: nn.Module) -> list[nn.Linear]:
        """The linear maps of a feed-forward module (or a copy of one) that write into the
        residual stream."""
        return [
            _get_path(mlp, tuple(p.split(".")), self.model_type) for p in self.mlp_residual_writers
        ]

    def norms(self, layer: nn.Module) -> list[nn.Module]:
        """Normalisation modules of one decoder layer."""
        return [_get_path(layer, tuple(p.split(".")), self.model_type) for p in self.layer_norms]

    def final_norm(self, model: nn.Module) -> nn.Module:
        return _get_path(model, self.final_norm_path, self.model_type)

    def embeddings(self, model: nn.Module) -> nn.Module:
        return _get_path(model, self.embed_path, self.model_type)

    def lm_head(self, model: nn.Module) -> nn.Module:
        return _get_path(model, self.lm_head_path, self.model_type)

    def renumber(self, layer: nn.Module, index: int) -> None:
        """Set the ``layer_idx`` (KV-cache slot) of a decoder layer and its attention module."""
        attention = _get_path(layer, tuple(self.attention_path.split(".")), self.model_type)
        for module in (layer, attention):
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = index

    # -- config -------------------------------------------------------------------------------
    def update_config(self, config: Any, plan: Plan) -> None:
        """Make ``config`` describe the layers of ``plan`` (in place).

        ``num_hidden_layers`` becomes the plan's depth; every per-layer list gets one entry per
        new layer, taken from the layer's first source (a new layer keeps, e.g., the attention
        type of the layer it was copied from, which is also what its attention module was built
        with); every count-style boundary is remapped the same way.

        Raises:
            UnsupportedArchitectureError: for heterogeneous (per-layer) configs.
            PlanError: if a per-layer list does not have one entry per base layer.
        """
        if getattr(config, "is_heterogeneous", False):
            raise UnsupportedArchitectureError(
                f"{self.model_type}: configs with per_layer_config (heterogeneous layers) are not "
                "supported by depth-changing expanders; use a homogeneous config."
            )
        for name in self.per_layer_config_lists:
            values = getattr(config, name, None)
            if isinstance(values, (list, tuple)):
                if len(values) != plan.base_num_layers:
                    raise PlanError(
                        f"config.{name} has {len(values)} entries but the model has "
                        f"{plan.base_num_layers} layers."
                    )
                setattr(config, name, [values[spec.source[0]] for spec in plan.layers])
        for name in self.layer_count_boundaries:
            boundary = getattr(config, name, None)
            if isinstance(boundary, int) and not isinstance(boundary, bool):
                setattr(config, name, sum(1 for s in plan.layers if s.source[0] < boundary))
        config.num_hidden_layers = plan.num_layers

    def config_snapshot(self, config: Any) -> dict[str, Any]:
        """The depth-dependent config fields, to restore after a temporary change."""
        names = ("num_hidden_layers", *self.per_layer_config_lists, *self.layer_count_boundaries)
        out = {}
        for name in names:
            if hasattr(config, name):
                value = getattr(config, name)
                out[name] = list(value) if isinstance(value, (list, tuple)) else value
        return out

    # -- on-disk tensor names -------------------------------------------------------------------
    @property
    def layer_prefix(self) -> str:
        """Tensor-name prefix of decoder layer parameters, e.g. ``model.layers.``."""
        return ".".join(self.layers_path) + "."

    def split_layer_key(self, key: str) -> tuple[int, str] | None:
        """Parse ``model.layers.<i>.<rest>`` into ``(i, rest)``; ``None`` for non-layer tensors."""
        match = re.fullmatch(re.escape(self.layer_prefix) + r"(\d+)\.(.+)", key)
        if match is None:
            return None
        return int(match.group(1)), match.group(2)

    def is_residual_writer_param(self, rest: str) -> bool:
        """Whether a within-layer tensor name (``self_attn.o_proj.weight``) is a residual writer."""
        module_path, _, param = rest.rpartition(".")
        return module_path in self.residual_writers and param in ("weight", "bias")


def _get_path(root: nn.Module, path: tuple[str, ...], model_type: str) -> nn.Module:
    module = root
    for i, attr in enumerate(path):
        if not hasattr(module, attr):
            raise UnsupportedArchitectureError(
                f"{model_type}: module has no '{'.'.join(path[: i + 1])}'. The architecture "
                f"does not match the registered layout; supported: {', '.join(supported_model_types())}."
            )
        module = getattr(module, attr)
    return module


_ARCHS: dict[str, ArchSpec] = {}


def register_arch(spec: ArchSpec) -> ArchSpec:
    """Register an :class:`ArchSpec`; refuses a ``model_type`` that is already registered."""
    if spec.model_type in _ARCHS:
        raise ValueError(f"Architecture '{spec.model_type}' is already registered.")
    _ARCHS[spec.model_type] = spec
    return spec


def supported_model_types() -> list[str]:
    """Model types with a registered :class:`ArchSpec`, sorted."""
    return sorted(_ARCHS)


def get_arch(config_or_model_type) -> ArchSpec:
    """Look up the :class:`ArchSpec` for a config, a model or a ``model_type`` string.

    Raises:
        UnsupportedArchitectureError: listing the supported model types.
    """
    model_type = config_or_model_type
    if hasattr(model_type, "config"):
        model_type = model_type.config
    if hasattr(model_type, "model_type"):
        model_type = model_type.model_type
    if model_type not in _ARCHS:
        raise UnsupportedArchitectureError(
            f"Unsupported architecture '{model_type}'. blockexp supports: "
            f"{', '.join(supported_model_types())}. To add one, register an ArchSpec "
            "(blockexp.layers.register_arch) describing where its decoder layers live."
        )
    return _ARCHS[model_type]


# Llama-family layout: pre-norm blocks, bias-free o_proj/down_proj (biases handled if present).
register_arch(ArchSpec("llama"))
# Mistral: the Llama layout; its sliding window is one global setting (no per-layer field).
register_arch(ArchSpec("mistral"))
# Qwen2: the Llama layout with q/k/v biases (o_proj has none); per-layer ``layer_types`` and the
# full/sliding boundary ``max_window_layers``.
register_arch(ArchSpec("qwen2", layer_count_boundaries=("max_window_layers",)))
