"""Stand-ins for heavy modules (torch, transformers) that import them when first used.

``torch = lazy_module("torch")`` at the top of a module keeps ``import blockexp.x`` from importing
torch: the real module is imported when an attribute is first read (``torch.float32``,
``isinstance(x, torch.Tensor)``), i.e. when the code really needs it. This is what lets
``python -m blockexp --help``, ``plan`` and streaming ``expand`` start without torch
(``tests/test_startup.py``). Only attribute reads are forwarded, and not those of dunder names
(introspection such as jsonargparse's ``hasattr(value, "__args__")`` must not import torch): use
the real module where it is passed on, compared or written to.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["lazy_attr", "lazy_module"]


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


class _LazyModule:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_name", name)

    def __getattr__(self, attr: str) -> Any:
        if _is_dunder(attr):
            raise AttributeError(attr)
        return getattr(importlib.import_module(self._name), attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        raise AttributeError(f"lazy stand-in for {self._name!r}: set attributes on the module")

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


class _LazyAttr:
    __slots__ = ("_module", "_attr")

    def __init__(self, module: str, attr: str) -> None:
        object.__setattr__(self, "_module", module)
        object.__setattr__(self, "_attr", attr)

    def _target(self) -> Any:
        return getattr(importlib.import_module(self._module), self._attr)

    def __getattr__(self, attr: str) -> Any:
        if _is_dunder(attr):
            raise AttributeError(attr)
        return getattr(self._target(), attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        raise AttributeError(f"lazy stand-in for {self._module}.{self._attr}: set it there")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._target()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<lazy {self._module}.{self._attr}>"


def lazy_module(name: str) -> Any:
    """A stand-in for module ``name`` that imports it on the first attribute read."""
    return _LazyModule(name)


def lazy_attr(module: str, attr: str) -> Any:
    """A stand-in for ``module.attr`` (e.g. a class used as ``AutoConfig.from_pretrained(...)``
    or a function that is called) that imports ``module`` on first use."""
    return _LazyAttr(module, attr)
