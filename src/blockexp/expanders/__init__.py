"""Knowledge-injection strategies behind one :class:`Expander` interface."""

from .base import (
    Expander,
    ExpanderConfigError,
    Expansion,
    build_expander,
    expander_names,
    get_expander,
    register_expander,
)
from .llama_pro import LlamaPro
from .surgery import apply_plan, average_layers, zero_residual_writers

__all__ = [
    "Expander",
    "ExpanderConfigError",
    "Expansion",
    "LlamaPro",
    "apply_plan",
    "average_layers",
    "build_expander",
    "expander_names",
    "get_expander",
    "register_expander",
    "zero_residual_writers",
]
