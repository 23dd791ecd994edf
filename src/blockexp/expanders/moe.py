"""MoE expansion: every FFN becomes a mixture of its frozen original and new, learned experts.

The width-growth alternative that LLaMA Pro compares block expansion against (Wu et al., ACL
2024, Sec. 5, Fig. 5 and Table 7, "Mixture-of-Expert (MoE)", citing Fedus et al., "Switch
Transformers", JMLR 2022). The paper gives no construction; this one is chosen so that, like
block expansion, the expanded model computes exactly the base function at initialisation and
the base weights never change.

In every decoder block the FFN ``F`` (found with :meth:`blockexp.layers.ArchSpec.mlp`) is replaced
by::

    y(x) = F(x) + sum_{j=1..n} g_j(x) * E_j(x)          g(x) = softmax(W_r x)  over n + 1 slots

            +--> F (original FFN, frozen) ------------------+
            |                                               |
    x ------+--> E_1 (copy of F, down_proj = 0) --* g_1 ----+--> y
            |    ...                                        |
            +--> E_n (copy of F, down_proj = 0) --* g_n ----+
            |
            +--> router W_r: hidden -> n + 1 logits (slot 0 = "original only", no expert)

* ``F`` is always on with weight 1 and frozen, so the base FFN's function is kept intact.
* Each new expert ``E_j`` is a deep copy of ``F`` whose output projection (the FFN's residual
  writer, ``down_proj`` for Llama; bias too, if any) is zero, so ``E_j(x) = 0`` and
  ``y(x) = F(x)`` for *any* router weights: the model's output is unchanged at initialisation.
  Copying ``F`` (rather than a random init) starts the expert's input projections from features
  the model already uses, as in sparse upcycling.
* The router's softmax has one extra slot (0) that selects no new expert, so it learns per token
  how much new capacity to use, even with a single new expert (``n = 1``: a learned sigmoid
  gate). ``top_k`` keeps only the ``k`` largest of the ``n + 1`` gates per token (Switch routing
  is ``top_k=1``); the kept gates are not renormalised, so choosing slot 0 means "base FFN only".
* Experts are computed densely (every token through every expert, then gated); sparse dispatch
  would only save compute, it does not change the function. There is no load-balancing loss.
* Trainable: the new experts and the routers of every block (``train_*`` options add more).

Why not a plain mixture ``g_0 F + sum g_j E_j``: with ``E_j = 0`` it scales the base FFN by
``g_0 < 1`` and breaks the identity at initialisation; with ``E_j = F`` (upcycling) the base FFN's
weights would have to train to specialise, which is what block expansion avoids.

Export: the result is not a plain Hugging Face Llama (its FFNs hold extra modules), so export
writes ``config.json`` (the base architecture plus a ``blockexp_moe`` entry with this expander's
arguments), ``blockexp_moe.safetensors`` (all weights) and a README note; there is deliberately
no ``model.safetensors``, so ``AutoModelForCausalLM.from_pretrained`` fails instead of silently
loading the base FFNs only. Load it with :func:`load_moe_model` (same logits as the trained model).
"""

from __future__ import annotations

import os
from typing import Any

from blockexp.expanders.base import (
    Expander,
    ExpanderConfigError,
    Expansion,
    parameter_names,
)
from blockexp.expanders.registry import build_expander, register_expander
from blockexp.layers import ArchSpec, Module, get_arch

__all__ = ["MoEExpansion", "load_moe_model"]


def _check_ffn_writers(arch: ArchSpec) -> None:
    """The FFN must hold a residual writer (``down_proj`` for Llama) to zero in new experts."""
    if not arch.mlp_residual_writers:
        raise ExpanderConfigError(
            f"MoEExpansion: the {arch.model_type} ArchSpec lists no residual writer inside the "
            f"FFN '{arch.mlp_path}', so a new expert cannot be zeroed. Add it to "
            "ArchSpec.residual_writers."
        )


@register_expander
class MoEExpansion(Expander):
    """Each FFN becomes the frozen original plus ``num_experts`` new gated experts (see module).

    Args:
        num_experts: new experts per FFN (each a copy of the FFN with its output projection
            zeroed).
        top_k: keep only the ``top_k`` largest of the ``num_experts + 1`` gates per token
            (``None``: dense gating; ``1``: Switch-style routing).
        seed: seed of the router initialisation (normal, std ``config.initializer_range``).
        layers: indices of the decoder blocks whose FFN is expanded (default: every block);
            fewer blocks give a smaller budget of new parameters.
        **kwargs: the ``train_*`` options of :class:`~blockexp.expanders.Expander`.
    """

    preserves_function = True
    has_export_hook = True
    custom_export_format = True

    def __init__(
        self,
        num_experts: int = 1,
        top_k: int | None = None,
        seed: int = 0,
        layers: list[int] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if layers is not None:
            layers = sorted({int(i) for i in layers})
            if not layers:
                raise ExpanderConfigError(
                    "MoEExpansion: layers is empty; list decoder block indices (e.g. [1, 4, 7]) "
                    "or leave it unset to expand every block."
                )
        self.layers = layers
        if num_experts < 1:
            raise ExpanderConfigError(f"MoEExpansion: num_experts must be >= 1, got {num_experts}.")
        if top_k is not None and not 1 <= top_k <= num_experts + 1:
            raise ExpanderConfigError(
                f"MoEExpansion: top_k must be between 1 and num_experts + 1 = {num_experts + 1} "
                f"(or None for dense gating), got {top_k}."
            )
        self.num_experts = num_experts
        self.top_k = top_k
        self.seed = seed

    def expand(self, model: Module) -> Expansion:
        import torch
        from torch import nn

        from blockexp.layers.moe import (
            MoEFeedForward,
            deepcopy_module,
            set_module,
            zero_tensors,
        )

        arch = get_arch(model.config)
        _check_ffn_writers(arch)
        hidden = int(model.config.hidden_size)
        std = float(getattr(model.config, "initializer_range", 0.02))
        generator = torch.Generator().manual_seed(self.seed)
        new_modules: list[Module] = []
        blocks = arch.layers(model)
        if self.layers is not None:
            bad = [i for i in self.layers if not 0 <= i < len(blocks)]
            if bad:
                raise ExpanderConfigError(
                    f"MoEExpansion: layers {bad} are out of range for a model with {len(blocks)} "
                    f"decoder blocks (valid: 0..{len(blocks) - 1})."
                )
        for index, layer in enumerate(blocks):
            if self.layers is not None and index not in self.layers:
                continue
            original = arch.mlp(layer)
            if isinstance(original, MoEFeedForward):
                raise ExpanderConfigError(
                    "MoEExpansion: the model's FFNs are already MoE-expanded; apply it once."
                )
            ref = next(original.parameters())
            experts = nn.ModuleList()
            for _ in range(self.num_experts):
                expert = deepcopy_module(original)
                zero_tensors(arch.mlp_residual_tensors(expert))
                experts.append(expert)
            router = nn.Linear(
                hidden, self.num_experts + 1, bias=False, device=ref.device, dtype=ref.dtype
            )
            weights = torch.randn(router.weight.shape, generator=generator) * std
            if not ref.is_meta:
                with torch.no_grad():
                    router.weight.copy_(weights.to(ref.dtype))
            set_module(layer, arch.mlp_path, MoEFeedForward(original, experts, router, self.top_k))
            new_modules += [experts, router]
        trainable = self.select_trainable(model, None, arch) | parameter_names(model, new_modules)
        return Expansion(
            model,
            None,
            trainable,
            extra={"num_experts": self.num_experts, "top_k": self.top_k, "layers": self.layers},
        )

    def export_model(self, model: Module) -> Module:
        """A saver that writes the MoE directory described in the module docstring."""
        from blockexp.layers.moe import MoEExport

        return MoEExport(model, self.config())

    @classmethod
    def load_exported(cls, directory: str | os.PathLike, dtype: Any = None) -> Module:
        """Load an exported MoE directory (see :func:`load_moe_model`)."""
        return load_moe_model(directory, dtype)


def load_moe_model(directory: str | os.PathLike, dtype: Any = None) -> Module:
    """Load a directory written by exporting an :class:`MoEExpansion` model.

    The base architecture is built from ``config.json``, the stored expander is applied, and the
    saved weights are loaded strictly (every tensor must match).

    Args:
        directory: the exported directory.
        dtype: cast the loaded model to this dtype (default: as saved).

    Returns:
        The causal LM in eval mode.
    """
    import json
    from pathlib import Path

    import torch
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    from blockexp.layers.moe import MOE_CONFIG_KEY, MOE_WEIGHTS_NAME

    path = Path(directory)
    weights = path / MOE_WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(
            f"{path} has no {MOE_WEIGHTS_NAME}; it is not an exported MoEExpansion model. Plain "
            "checkpoints load with AutoModelForCausalLM.from_pretrained."
        )
    data = json.loads((path / "config.json").read_text())
    info = data.pop(MOE_CONFIG_KEY, None)
    if info is None:
        raise ValueError(f"{path}/config.json has no '{MOE_CONFIG_KEY}' entry.")
    config = AutoConfig.for_model(data.pop("model_type"), **data)
    saved_dtype = getattr(config, "dtype", None)
    if isinstance(saved_dtype, str):
        saved_dtype = getattr(torch, saved_dtype.removeprefix("torch."), None)
    kwargs = {"dtype": saved_dtype} if isinstance(saved_dtype, torch.dtype) else {}
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    model.tie_weights()
    build_expander(info).expand(model)
    load_model(model, str(weights), strict=True)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()
