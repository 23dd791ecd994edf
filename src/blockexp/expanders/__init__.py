"""Strategies: one file per strategy behind the :class:`Expander` contract, and their registry.

May import :mod:`blockexp.io` and :mod:`blockexp.layers`. Every module of this package is
imported here (none imports torch at module level), so each strategy registers itself by name
(:mod:`blockexp.expanders.registry`); registered strategies are attributes of this package
(``blockexp.expanders.LlamaPro``), which is what config files name in ``class_path``.
"""

import importlib
import pkgutil

from blockexp.expanders.base import Expander, ExpanderConfigError, Expansion
from blockexp.expanders.registry import (
    build_expander,
    expander_names,
    get_expander,
    register_expander,
)

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
    "build_expander",
    "expander_names",
    "get_expander",
    "register_expander",
]
