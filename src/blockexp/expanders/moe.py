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

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..layers import ArchSpec, get_arch
from .base import (
    Expander,
    ExpanderConfigError,
    Expansion,
    build_expander,
    parameter_names,
    register_expander,
)

__all__ = ["MoEExpansion", "MoEFeedForward", "MoEExport", "load_moe_model", "MOE_WEIGHTS_NAME"]

MOE_WEIGHTS_NAME = "blockexp_moe.safetensors"
MOE_CONFIG_KEY = "blockexp_moe"


class MoEFeedForward(nn.Module):
    """``y = original(x) + sum_j g_j(x) * experts[j](x)`` with ``g = softmax(router(x))``.

    Args:
        original: the base FFN (kept with weight 1).
        experts: the new experts.
        router: linear map from the hidden size to ``len(experts) + 1`` logits (slot 0: none).
        top_k: keep only the ``top_k`` largest gates per token (``None``: all).
    """

    def __init__(
        self, original: nn.Module, experts: nn.ModuleList, router: nn.Linear, top_k: int | None
    ) -> None:
        super().__init__()
        if router.out_features != len(experts) + 1:
            raise ValueError(
                f"router has {router.out_features} outputs, expected {len(experts) + 1}."
            )
        self.original = original
        self.experts = experts
        self.router = router
        self.top_k = top_k

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Routing weights ``(..., n + 1)`` in float32; slot 0 means "no new expert"."""
        probs = torch.softmax(self.router(x).float(), dim=-1)
        if self.top_k is not None and self.top_k < probs.shape[-1]:
            kept = torch.topk(probs, self.top_k, dim=-1).indices
            mask = torch.zeros_like(probs).scatter_(-1, kept, 1.0)
            probs = probs * mask
        return probs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.original(x)
        gates = self.gates(x)
        for j, expert in enumerate(self.experts):
            y = y + gates[..., j + 1 : j + 2].to(y.dtype) * expert(x)
        return y


def _get(root: nn.Module, path: str) -> nn.Module:
    module = root
    for attr in path.split("."):
        module = getattr(module, attr)
    return module


def _set(root: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(_get(root, parent) if parent else root, attr, value)


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

    def expand(self, model: nn.Module) -> Expansion:
        arch = get_arch(model.config)
        _check_ffn_writers(arch)
        hidden = int(model.config.hidden_size)
        std = float(getattr(model.config, "initializer_range", 0.02))
        generator = torch.Generator().manual_seed(self.seed)
        new_modules: list[nn.Module] = []
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
                expert = _deepcopy(original)
                _zero(arch.mlp_residual_tensors(expert))
                experts.append(expert)
            router = nn.Linear(
                hidden, self.num_experts + 1, bias=False, device=ref.device, dtype=ref.dtype
            )
            weights = torch.randn(router.weight.shape, generator=generator) * std
            if not ref.is_meta:
                with torch.no_grad():
                    router.weight.copy_(weights.to(ref.dtype))
            _set(layer, arch.mlp_path, MoEFeedForward(original, experts, router, self.top_k))
            new_modules += [experts, router]
        trainable = self.select_trainable(model, None, arch) | parameter_names(model, new_modules)
        return Expansion(
            model,
            None,
            trainable,
            extra={"num_experts": self.num_experts, "top_k": self.top_k, "layers": self.layers},
        )

    def export_model(self, model: nn.Module) -> nn.Module:
        """A saver that writes the MoE directory described in the module docstring."""
        return MoEExport(model, self)

    @classmethod
    def load_exported(cls, directory: str | os.PathLike, dtype: Any = None) -> nn.Module:
        """Load an exported MoE directory (see :func:`load_moe_model`)."""
        return load_moe_model(directory, dtype)


def _deepcopy(module: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(module)


@torch.no_grad()
def _zero(tensors: list[torch.Tensor]) -> None:
    for tensor in tensors:
        if not tensor.is_meta:
            tensor.zero_()


class MoEExport(nn.Module):
    """Wraps an MoE-expanded model for export: ``save_pretrained`` writes an MoE directory.

    Args:
        model: the MoE-expanded causal LM (not modified).
        expander: the :class:`MoEExpansion` that built it.
    """

    def __init__(self, model: nn.Module, expander: MoEExpansion) -> None:
        super().__init__()
        self.model = model
        self.expander_config = expander.config()

    @property
    def config(self):
        return self.model.config

    def forward(self, *args: Any, **kwargs: Any):
        return self.model(*args, **kwargs)

    def save_pretrained(self, directory: str | os.PathLike, **_: Any) -> None:
        """Write ``config.json``, ``blockexp_moe.safetensors`` and ``README.md`` to ``directory``."""
        from safetensors.torch import save_model

        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        config = json.loads(self.model.config.to_json_string(use_diff=False))
        config[MOE_CONFIG_KEY] = self.expander_config
        config["dtype"] = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        save_model(self.model, str(path / MOE_WEIGHTS_NAME), metadata={"format": "pt"})
        (path / "README.md").write_text(
            "# MoE-expanded model (blockexp)\n\n"
            "The FFNs of this model are mixtures (blockexp.expanders.MoEExpansion), which plain\n"
            "`transformers` cannot build, so there is no model.safetensors. Load it with:\n\n"
            "```python\nfrom blockexp.expanders.moe import load_moe_model\n"
            f"model = load_moe_model({str(path.name)!r})\n```\n"
        )


def load_moe_model(directory: str | os.PathLike, dtype: torch.dtype | None = None) -> nn.Module:
    """Load a directory written by exporting an :class:`MoEExpansion` model.

    The base architecture is built from ``config.json``, the stored expander is applied, and the
    saved weights are loaded strictly (every tensor must match).

    Args:
        directory: the exported directory.
        dtype: cast the loaded model to this dtype (default: as saved).

    Returns:
        The causal LM in eval mode.
    """
    from safetensors.torch import load_model
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

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
