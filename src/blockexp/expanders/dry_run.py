"""Planning an expansion on a model built on the meta device: layer map and parameter counts.

``plan`` uses it for what :mod:`blockexp.io.planning` does not count from files (hub ids, configs
with custom modelling code, strategies that add modules: LoRA, MoEExpansion); the tests use it as
the oracle of that module.
"""

from __future__ import annotations

from typing import Any

from blockexp.expanders.base import Expander
from blockexp.layers.plan import summary

__all__ = ["plan_summary"]


def plan_summary(base: str, expander: Expander, trust_remote_code: bool = False) -> dict[str, Any]:
    """Plan an expansion from a config alone: the model is built on the meta device."""
    import torch
    from transformers import AutoModelForCausalLM

    from blockexp.io.load import load_config

    config = load_config(base, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    base_layers = int(config.num_hidden_layers)
    base_params = sum(p.numel() for p in model.parameters())
    expansion = expander.expand(model)
    total, trainable = expansion.parameter_counts()
    return summary(
        expansion.plan,
        model_type=config.model_type,
        strategy=type(expander).__name__,
        expander=expander.config(),
        base_num_layers=base_layers,
        base_params=base_params,
        num_layers=int(expansion.model.config.num_hidden_layers),
        total_params=total,
        trainable_params=trainable,
    )
