"""Knowledge-injection strategies behind one :class:`Expander` interface.

Every module in this package is imported here, so each strategy registers itself (by class name)
when ``blockexp.expanders`` is imported; registered strategies are attributes of this package
(``blockexp.expanders.LlamaPro``), which is what config files name in ``class_path``.
"""

import importlib
import pkgutil

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

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")


def __getattr__(name: str):
    try:
        return get_expander(name)
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


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
