"""Knowledge-injection strategies behind one :class:`Expander` interface.

Every module in this package is imported here, so each strategy registers itself (by class name)
when ``blockexp.expanders`` is imported; registered strategies are attributes of this package
(``blockexp.expanders.LlamaPro``), which is what config files name in ``class_path``.
"""

import importlib
import pkgutil
import sys

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

# Modules that need torch as soon as they are imported (MoE defines ``nn.Module`` classes), with
# the strategies they register. The ``python -m blockexp`` process defers them
# (``blockexp._defer_torch_strategies``, set by ``__main__``): ``plan`` and ``expand`` naming
# another strategy then start without torch, and :func:`import_all` registers them when a command
# needs them (or one of these names is looked up here). Every other import registers all.
_TORCH_MODULES = {"moe": ("MoEExpansion",)}
_DEFERRED = [
    name
    for name in _TORCH_MODULES
    if getattr(sys.modules.get("blockexp"), "_defer_torch_strategies", False)
]

for _info in pkgutil.iter_modules(__path__):
    if _info.name not in _DEFERRED:
        importlib.import_module(f"{__name__}.{_info.name}")


def import_all() -> None:
    """Register every strategy of this package (imports the modules :data:`_DEFERRED` left)."""
    while _DEFERRED:
        importlib.import_module(f"{__name__}.{_DEFERRED.pop(0)}")


_moved = moved(
    __name__,
    {n: "blockexp.layers" for n in ("apply_plan", "average_layers", "zero_residual_writers")},
)


def __getattr__(name: str):
    try:
        return get_expander(name)
    except KeyError:
        if any(name in _TORCH_MODULES[module] for module in _DEFERRED):
            import_all()
            return __getattr__(name)
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
