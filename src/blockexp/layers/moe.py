"""The structure of an MoE-expanded FFN (:class:`MoEFeedForward`) and the saver of its model.

Built by :class:`blockexp.expanders.MoEExpansion` (which documents the construction); imported
only when a model is MoE-expanded, saved or loaded.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["MOE_CONFIG_KEY", "MOE_WEIGHTS_NAME", "MoEExport", "MoEFeedForward"]

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


def get_module(root: nn.Module, path: str) -> nn.Module:
    module = root
    for attr in path.split("."):
        module = getattr(module, attr)
    return module


def set_module(root: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(get_module(root, parent) if parent else root, attr, value)


def deepcopy_module(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module)


@torch.no_grad()
def zero_tensors(tensors: list[torch.Tensor]) -> None:
    for tensor in tensors:
        if not tensor.is_meta:
            tensor.zero_()


class MoEExport(nn.Module):
    """Wraps an MoE-expanded model for export: ``save_pretrained`` writes an MoE directory.

    Args:
        model: the MoE-expanded causal LM (not modified).
        expander_config: the ``config()`` of the :class:`MoEExpansion` that built it.
    """

    def __init__(self, model: nn.Module, expander_config: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.expander_config = expander_config

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
