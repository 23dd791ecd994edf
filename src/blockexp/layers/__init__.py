"""Decoder-layer structure and surgery, below the expanders (which build on it).

Per-architecture layout (:mod:`.arch`), the expansion plan (:mod:`.plan`), in-memory surgery
(:mod:`.surgery`) and trainable-name selection (:mod:`.selection`).
"""

from .arch import (
    ArchSpec,
    UnsupportedArchitectureError,
    get_arch,
    register_arch,
    supported_model_types,
)
from .plan import Init, LayerSpec, Plan, PlanError
from .selection import TrainOptions, trainable_parameter_names

# In-memory surgery needs torch when imported: loaded on first use (planning and streaming do not).
_SURGERY = ("apply_plan", "average_layers", "zero_linears", "zero_residual_writers")


def __getattr__(name: str):
    if name in _SURGERY:
        from . import surgery

        return getattr(surgery, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ArchSpec",
    "Init",
    "LayerSpec",
    "Plan",
    "PlanError",
    "TrainOptions",
    "UnsupportedArchitectureError",
    "apply_plan",
    "average_layers",
    "get_arch",
    "register_arch",
    "supported_model_types",
    "trainable_parameter_names",
    "zero_linears",
    "zero_residual_writers",
]
