"""Knowledge-injection strategies behind one :class:`Expander` interface.

Every module in this package is imported here, so each strategy registers itself (by class name)
when ``blockexp.expanders`` is imported; registered strategies are attributes of this package
(``blockexp.expanders.LlamaPro``), which is what config files name in ``class_path``.
"""

import importlib
import pkgutil

from .._compat import moved
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

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")


_moved = moved(
    __name__,
    {n: "blockexp.layers" for n in ("apply_plan", "average_layers", "zero_residual_writers")},
)


def __getattr__(name: str):
    try:
        return get_expander(name)
    except KeyError:
        return _moved(name)


__all__ = [
    "Expander",
    "ExpanderConfigError",
    "Expansion",
    "LlamaPro",
    "build_expander",
    "expander_names",
    "get_expander",
    "register_expander",
]
