"""Decoder-layer structure: per-architecture layout (:mod:`.arch`, the supported families in
:mod:`.families`, registered on import of this package), the expansion plan
(:mod:`.plan`), in-memory surgery (:mod:`.surgery`, imports torch), trainable-name selection
(:mod:`.selection`) and the MoE FFN block (:mod:`.moe`, imports torch). Imports no other package
of blockexp; this ``__init__`` re-exports only the torch-free names."""

from blockexp.layers import families  # noqa: F401  (registers every supported architecture)
from blockexp.layers.arch import (
    ArchSpec,
    Module,
    UnsupportedArchitectureError,
    get_arch,
    register_arch,
    supported_model_types,
)
from blockexp.layers.plan import (
    Init,
    LayerSpec,
    Plan,
    PlanError,
)
from blockexp.layers.selection import TrainOptions, trainable_parameter_names

__all__ = [
    "ArchSpec",
    "Module",
    "Init",
    "LayerSpec",
    "Plan",
    "PlanError",
    "TrainOptions",
    "UnsupportedArchitectureError",
    "get_arch",
    "register_arch",
    "supported_model_types",
    "trainable_parameter_names",
]
