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
from .surgery import apply_plan, average_layers, zero_linears, zero_residual_writers

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
