"""The one registry of strategies: a name mapped to ``"module:Class"``.

A strategy of this package registers itself with the :func:`register_expander` class decorator
in its own file (``blockexp.expanders`` imports every module of the package, none of which
imports torch at module level, so registering them all is cheap). A strategy that lives
elsewhere can be registered by name and import path without importing it
(``register_expander("Mine", "my_pkg.strategies:Mine")``); it is imported when first looked up.

Names are what configs and the command line use: ``class_path: LlamaPro`` or
``--expander LlamaPro`` (jsonargparse finds the class among the registered ``Expander``
subclasses), ``blockexp.expanders.LlamaPro`` (the package resolves its attributes here) and
:func:`build_expander` for a manifest's ``{"class_path": ..., "init_args": ...}``.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from blockexp.expanders.base import Expander, ExpanderConfigError

__all__ = [
    "build_expander",
    "expander_names",
    "get_expander",
    "import_registered",
    "register_expander",
    "target_of",
    "unregister_expander",
]

#: name -> "module:Class" (every registered strategy), and the classes imported so far.
_TARGETS: dict[str, str] = {}
_CLASSES: dict[str, type[Expander]] = {}


def _overrides(cls: type, method: str) -> bool:
    return inspect.getattr_static(cls, method) is not inspect.getattr_static(Expander, method)


def _check_declarations(cls: type[Expander]) -> None:
    """Refuse capability declarations that contradict the class's implementation."""
    problems = []
    if cls.streamable:
        if not _overrides(cls, "plan"):
            problems.append("streamable = True but it does not implement plan()")
        for method in ("expand", "select_trainable"):
            if _overrides(cls, method):
                problems.append(
                    f"streamable = True but it overrides {method}(), which streaming would bypass"
                )
    if cls.has_export_hook != _overrides(cls, "export_model"):
        problems.append(
            f"has_export_hook = {cls.has_export_hook} but it "
            f"{'does not override' if cls.has_export_hook else 'overrides'} export_model()"
        )
    if cls.custom_export_format != _overrides(cls, "load_exported"):
        problems.append(
            f"custom_export_format = {cls.custom_export_format} but it "
            f"{'does not override' if cls.custom_export_format else 'overrides'} load_exported()"
        )
    if cls.preserves_function and _overrides(cls, "is_identity"):
        problems.append(
            "preserves_function = True (for every argument) but it overrides is_identity(); "
            "declare False and answer per instance in is_identity()"
        )
    if problems:
        raise ExpanderConfigError(f"Expander {cls.__name__}: " + "; ".join(problems) + ".")


def _claim(name: str, target: str) -> None:
    if not name.isidentifier():
        raise ValueError(f"An expander name must be a Python identifier, got {name!r}.")
    if _TARGETS.get(name, target) != target:
        raise ValueError(
            f"An expander named '{name}' is already registered ({_TARGETS[name]}); "
            "choose another name."
        )
    _TARGETS[name] = target


def register_expander(cls_or_name: Any, target: str | None = None) -> Any:
    """Register a strategy.

    ``@register_expander`` on an :class:`Expander` subclass registers it under its class name
    (refusing a non-Expander, a name taken by another class, and capability declarations that
    contradict the implementation). ``register_expander("Name", "module:Class")`` registers a
    class by import path without importing it; it is checked when first looked up.
    """
    if isinstance(cls_or_name, str):
        if target is None or ":" not in target:
            raise ValueError(
                f"register_expander({cls_or_name!r}, target): target must be 'module:Class', "
                f"got {target!r}."
            )
        _claim(cls_or_name, target)
        return None
    cls = cls_or_name
    if not (isinstance(cls, type) and issubclass(cls, Expander)):
        raise TypeError(f"{cls!r} is not an Expander subclass.")
    _check_declarations(cls)
    _claim(cls.__name__, target_of(cls))
    cls.name = cls.__name__
    _CLASSES[cls.__name__] = cls
    return cls


def unregister_expander(name: str) -> None:
    """Forget the strategy called ``name`` (a test's or a notebook's temporary one)."""
    _TARGETS.pop(name, None)
    _CLASSES.pop(name, None)


def target_of(cls: type) -> str:
    """``"module:Class"`` of a class."""
    return f"{cls.__module__}:{cls.__qualname__}"


def expander_names() -> list[str]:
    """Registered expander names, sorted."""
    return sorted(_TARGETS)


def get_expander(name: str) -> type[Expander]:
    """The registered expander class called ``name`` (imported on first lookup)."""
    if name in _CLASSES:
        return _CLASSES[name]
    if name not in _TARGETS:
        raise KeyError(f"Unknown expander '{name}'. Registered: {', '.join(expander_names())}.")
    module, _, qualname = _TARGETS[name].partition(":")
    cls: Any = importlib.import_module(module)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    if name not in _CLASSES:  # registered by path: check it as the decorator would
        if not (isinstance(cls, type) and issubclass(cls, Expander)):
            raise TypeError(f"{_TARGETS[name]} (registered as {name!r}) is not an Expander.")
        _check_declarations(cls)
        cls.name = name
        _CLASSES[name] = cls
    return _CLASSES[name]


def import_registered() -> list[type[Expander]]:
    """Every registered strategy's class, importing those registered by path (so that a parser
    that looks for ``Expander`` subclasses by name, jsonargparse's, finds them)."""
    return [get_expander(name) for name in expander_names()]


def build_expander(config: dict[str, Any] | str) -> Expander:
    """Instantiate an expander from a name or ``{"class_path"|"name": ..., "init_args": {...}}``."""
    if isinstance(config, str):
        return get_expander(config)()
    name = config.get("name") or config["class_path"].rsplit(".", 1)[-1]
    return get_expander(name)(**config.get("init_args", {}))
