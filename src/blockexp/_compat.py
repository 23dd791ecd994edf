"""Old import paths of moved names: they keep working for one release, with a warning."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["load_script", "moved"]


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


def load_script(name: str, deprecated_from: str | None = None):
    """Import ``scripts/<name>.py`` of the blockexp source tree (for the deprecated module paths
    of the data generators, which moved out of the package); ``deprecated_from`` names the old
    module, which then warns (once per import)."""
    import importlib.util
    from pathlib import Path

    if deprecated_from is not None:
        warnings.warn(
            f"{deprecated_from} has moved to scripts/{name}.py (python scripts/{name}.py); the "
            "old path will be removed in the next release.",
            DeprecationWarning,
            stacklevel=3,
        )
    path = Path(__file__).resolve().parents[2] / "scripts" / f"{name}.py"
    if not path.is_file():
        raise ImportError(
            f"this generator moved to scripts/{name}.py of the blockexp repository, which this "
            "installation does not include; run it from a clone of the repository"
        )
    spec = importlib.util.spec_from_file_location(f"blockexp_scripts_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
