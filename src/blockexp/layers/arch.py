"""Per-architecture structure: decoder layers, residual writers and per-layer config fields.

Layers are found by *structure*: each supported ``model_type`` names the attribute path of its
decoder-layer ``ModuleList`` and, inside one decoder layer, the attribute paths of the modules or
parameters that write into the residual stream (attention output and FFN output; for a sparse
MoE FFN every expert's down projection, plus the shared expert and its gate). Nothing here
matches parameter names by substring; on-disk tensor names are parsed with an exact prefix
(``model.layers.<i>.``) derived from the same attribute path, and on-disk residual writers are
matched in full against the spec's checkpoint paths (``*`` standing for an expert index).

The supported architectures are registered in :mod:`blockexp.layers.families`.

When the depth changes, :meth:`ArchSpec.update_config` rewrites every per-layer field so that
each new layer keeps the attention type (and dense/sparse FFN) of its first source layer and the
count-style boundary (``max_window_layers``) still separates the same layers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from blockexp.layers.plan import PlanError

if TYPE_CHECKING:  # torch is imported where a model is handled: planning does without it
    import torch
    from torch import nn

    from blockexp.layers.plan import Plan
    from blockexp.layers.shapes import ParamLayout

__all__ = [
    "ArchSpec",
    "Module",
    "UnsupportedArchitectureError",
    "get_arch",
    "register_arch",
    "supported_model_types",
]

#: A ``torch.nn.Module`` in the signatures of the strategies' modules. jsonargparse executes the
#: ``if TYPE_CHECKING:`` blocks of every module whose classes it reads, so a strategy module that
#: imported torch there would import it for ``plan``; the strategies annotate with this instead.
Module = Any


class UnsupportedArchitectureError(ValueError):
    """The model's architecture has no :class:`ArchSpec`."""


@dataclass(frozen=True)
class ArchSpec:
    """Structural description of one decoder-only architecture.

    Attributes:
        model_type: ``config.model_type`` this spec applies to.
        layers_path: attribute path from the ``*ForCausalLM`` module to the decoder ``ModuleList``.
        residual_writers: attribute paths, inside one (dense) decoder layer, of what writes into
            the residual stream: an ``nn.Linear`` (weight and bias are zeroed) or a parameter.
            Zeroing them turns the block into an exact identity (pre-norm blocks, and blocks
            whose norms sit after the writer, since an RMSNorm maps zero to zero).
        moe_residual_writers: the same for a decoder layer whose FFN is sparse (it has
            :attr:`experts_path`): every expert's down projection (one fused 3-D parameter in
            ``transformers`` 5), a shared expert's down projection and its gate.
        experts_path: attribute path, inside one decoder layer, of the experts module; a layer
            that has it is sparse (Qwen-MoE mixes dense and sparse layers).
        checkpoint_residual_writers: the residual writers as checkpoint tensor paths inside one
            layer (``*`` matches an expert index), when the files name them differently from
            the modules (Mixtral's ``block_sparse_moe.experts.<e>.w2``). Default: the module
            paths. A tensor matches ``<path>.weight``, ``<path>.bias`` or ``<path>`` itself.
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
        dense_layers_list: config attribute listing the indices of dense-FFN layers in a sparse
            model (Qwen-MoE's ``mlp_only_layers``); remapped to the new indices.
        sparse_step: config attribute making layer ``i`` sparse iff ``(i + 1) % step == 0``
            (Qwen-MoE's ``decoder_sparse_step``). A plan breaks that pattern, so after surgery it
            is ``1`` and every dense layer is listed in :attr:`dense_layers_list`.
        shapes: how the checkpoint's tensor shapes follow from ``config.json``
            (:mod:`blockexp.layers.shapes`), so that ``plan`` counts parameters from the config
            alone; ``None``: counted from weights or from a model built on the meta device.
    """

    model_type: str
    layers_path: tuple[str, ...] = ("model", "layers")
    residual_writers: tuple[str, ...] = ("self_attn.o_proj", "mlp.down_proj")
    moe_residual_writers: tuple[str, ...] = ()
    experts_path: str = "mlp.experts"
    checkpoint_residual_writers: tuple[str, ...] | None = None
    layer_norms: tuple[str, ...] = ("input_layernorm", "post_attention_layernorm")
    final_norm_path: tuple[str, ...] = ("model", "norm")
    embed_path: tuple[str, ...] = ("model", "embed_tokens")
    lm_head_path: tuple[str, ...] = ("lm_head",)
    attention_path: str = "self_attn"
    mlp_path: str = "mlp"
    per_layer_config_lists: tuple[str, ...] = ("layer_types",)
    layer_count_boundaries: tuple[str, ...] = ()
    dense_layers_list: str | None = None
    sparse_step: str | None = None
    shapes: ParamLayout | None = None

    # -- in-memory access -------------------------------------------------------------------
    def layers(self, model: nn.Module) -> nn.ModuleList:
        """Return the decoder-layer ``ModuleList`` of ``model`` (checked to be one)."""
        from torch import nn

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

    def is_sparse(self, layer: nn.Module) -> bool:
        """Whether a decoder layer's FFN is a sparse MoE block (it has :attr:`experts_path`)."""
        if not self.moe_residual_writers:
            return False
        module = layer
        for attr in self.experts_path.split("."):
            module = getattr(module, attr, None)
            if module is None:
                return False
        return True

    def layer_residual_writers(self, layer: nn.Module) -> tuple[str, ...]:
        """The residual-writer paths of this decoder layer (dense or sparse)."""
        return self.moe_residual_writers if self.is_sparse(layer) else self.residual_writers

    def residual_tensors(self, layer: nn.Module) -> list[torch.Tensor]:
        """The parameters of one decoder layer that write into the residual stream (weights and
        biases of the writer linears, fused expert parameters)."""
        return self._writer_tensors(layer, self.layer_residual_writers(layer))

    def _writer_tensors(self, root: nn.Module, paths: tuple[str, ...]) -> list[torch.Tensor]:
        import torch
        from torch import nn

        out: list[torch.Tensor] = []
        for path in paths:
            found = _get_path(root, tuple(path.split(".")), self.model_type)
            if isinstance(found, torch.Tensor):
                out.append(found)
            elif isinstance(found, nn.Module) and isinstance(
                getattr(found, "weight", None), torch.Tensor
            ):
                out.append(found.weight)
                if isinstance(getattr(found, "bias", None), torch.Tensor):
                    out.append(found.bias)
            else:
                raise UnsupportedArchitectureError(
                    f"{self.model_type}: residual writer '{path}' of a decoder layer is a "
                    f"{type(found).__name__}, neither a parameter nor a module with a weight."
                )
        return out

    def mlp(self, layer: nn.Module) -> nn.Module:
        """The feed-forward module of one decoder layer."""
        return _get_path(layer, tuple(self.mlp_path.split(".")), self.model_type)

    @property
    def mlp_residual_writers(self) -> tuple[str, ...]:
        """Attribute paths, inside a dense feed-forward module, of its residual writers
        (``down_proj`` for Llama): the residual writers that lie under :attr:`mlp_path`."""
        return self._under_mlp(self.residual_writers)

    def _under_mlp(self, writers: tuple[str, ...]) -> tuple[str, ...]:
        prefix = self.mlp_path + "."
        return tuple(w[len(prefix) :] for w in writers if w.startswith(prefix))

    def mlp_residual_tensors(self, mlp: nn.Module) -> list[torch.Tensor]:
        """The parameters of a feed-forward module (or a copy of one) that write into the
        residual stream; a sparse MoE block gives its experts' (and shared expert's) writers."""
        experts = self._under_mlp((self.experts_path,))
        sparse = bool(self.moe_residual_writers and experts and hasattr(mlp, experts[0]))
        writers = self._under_mlp(self.moe_residual_writers if sparse else self.residual_writers)
        return self._writer_tensors(mlp, writers)

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
        if self.dense_layers_list is not None:
            dense = self.dense_layers(config, plan.base_num_layers)
            if dense is not None:
                setattr(
                    config,
                    self.dense_layers_list,
                    [s.index for s in plan.layers if s.source[0] in dense],
                )
                if self.sparse_step is not None and hasattr(config, self.sparse_step):
                    setattr(config, self.sparse_step, 1)
        config.num_hidden_layers = plan.num_layers

    def dense_layers(self, config: Any, num_layers: int) -> set[int] | None:
        """Indices of the base's dense-FFN layers in a sparse model (``None`` if the config
        has no :attr:`dense_layers_list`)."""
        if self.dense_layers_list is None or not hasattr(config, self.dense_layers_list):
            return None
        listed = {int(i) for i in getattr(config, self.dense_layers_list) or ()}
        step = int(getattr(config, self.sparse_step, 1) or 1) if self.sparse_step else 1
        return {i for i in range(num_layers) if i in listed or (i + 1) % step != 0}

    def config_snapshot(self, config: Any) -> dict[str, Any]:
        """The depth-dependent config fields, to restore after a temporary change."""
        names = (
            "num_hidden_layers",
            *self.per_layer_config_lists,
            *self.layer_count_boundaries,
            *((self.dense_layers_list,) if self.dense_layers_list else ()),
            *((self.sparse_step,) if self.sparse_step else ()),
        )
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
        """Whether a within-layer checkpoint tensor name (``self_attn.o_proj.weight``,
        ``block_sparse_moe.experts.3.w2.weight``) is a residual writer."""
        return self._checkpoint_writer_pattern.fullmatch(rest) is not None

    @cached_property
    def _checkpoint_writer_pattern(self) -> re.Pattern[str]:
        paths = self.checkpoint_residual_writers
        if paths is None:
            paths = (*self.residual_writers, *self.moe_residual_writers)
        alternatives = [re.escape(p).replace(r"\*", r"\d+") for p in paths]
        return re.compile(r"(?:" + "|".join(alternatives) + r")(?:\.weight|\.bias)?")


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
