"""Old import paths of moved names: they keep working for one release, with a warning."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["moved"]


def moved(old: str, targets: Mapping[str, str] | str) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``old`` that forwards moved names with a DeprecationWarning.

    Args:
        old: the old module's name.
        targets: the new module of every moved name (``{name: module}``), or one module that
            took every name.
    """

    def __getattr__(name: str) -> Any:
        new = targets if isinstance(targets, str) else targets.get(name)
        if new is None or name.startswith("__"):
            raise AttributeError(f"module {old!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(new), name)
        warnings.warn(
            f"{old}.{name} has moved to {new}.{name}; the old path will be removed in the next "
            "release.",
            DeprecationWarning,
            stacklevel=2,
        )
        return value

    return __getattr__
