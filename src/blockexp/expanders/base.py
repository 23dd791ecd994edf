"""The :class:`Expander` interface and the registry of strategies.

An expander turns a loaded base model into the model that will be trained and says which of its
parameters train. Depth-changing strategies only implement :meth:`Expander.plan`; the shared
machinery applies the plan (:func:`~blockexp.expanders.surgery.apply_plan`) and derives the
trainable set from it. Strategies that keep the depth override :meth:`Expander.expand`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from ..arch import ArchSpec, get_arch
from ..plan import Plan
from .surgery import apply_plan

__all__ = [
    "Expander",
    "Expansion",
    "ExpanderConfigError",
    "register_expander",
    "get_expander",
    "expander_names",
    "build_expander",
]


class ExpanderConfigError(ValueError):
    """An expander's arguments do not fit the base model."""


@dataclass
class Expansion:
    """Result of :meth:`Expander.expand`.

    Attributes:
        model: the expanded model (modified in place).
        plan: the layer map, or ``None`` for strategies that keep the depth.
        trainable: names of the parameters that train (as in ``model.named_parameters()``).
        extra: strategy-specific facts recorded in the manifest.
    """

    model: nn.Module
    plan: Plan | None
    trainable: frozenset[str]
    extra: dict[str, Any] = field(default_factory=dict)

    def freeze(self) -> None:
        """Set ``requires_grad`` to True exactly on :attr:`trainable` parameters."""
        for name, param in self.model.named_parameters():
            param.requires_grad_(name in self.trainable)

    def parameter_counts(self) -> tuple[int, int]:
        """``(total, trainable)`` parameter counts (tied parameters counted once)."""
        total = trainable = 0
        for name, param in self.model.named_parameters():
            total += param.numel()
            if name in self.trainable:
                trainable += param.numel()
        return total, trainable


class Expander:
    """A knowledge-injection strategy.

    Subclasses are registered by class name (see :func:`register_expander`) and are selected in
    configs with ``class_path`` or on the command line with ``--expander Name``.

    Args:
        train_embeddings: also train the input token embedding.
        train_lm_head: also train the output projection (the same tensor as the embedding when
            the model ties them).
        train_norms: also train every normalisation layer (all blocks and the final norm).
    """

    name: ClassVar[str] = ""
    #: True when the expanded model computes exactly the base function at initialisation
    #: (checked by the contract tests: equal logits and equal cached generation).
    preserves_function: ClassVar[bool] = False

    def __init__(
        self,
        train_embeddings: bool = False,
        train_lm_head: bool = False,
        train_norms: bool = False,
    ) -> None:
        self.train_embeddings = train_embeddings
        self.train_lm_head = train_lm_head
        self.train_norms = train_norms

    # -- the strategy ---------------------------------------------------------------------------
    def plan(self, num_layers: int) -> Plan | None:
        """Layer map for a base model with ``num_layers`` layers (``None``: depth unchanged)."""
        return None

    def expand(self, model: nn.Module) -> Expansion:
        """Apply the strategy to ``model`` (in place) and return the :class:`Expansion`."""
        arch = get_arch(model.config)
        plan = self.plan(len(arch.layers(model)))
        if plan is not None:
            apply_plan(model, plan, arch)
        trainable = self.trainable_modules(model, plan, arch)
        return Expansion(model, plan, self._names_of(model, trainable))

    def export_model(self, model: nn.Module) -> nn.Module:
        """The plain ``transformers`` model to save for export (e.g. LoRA merges its adapters).

        The default returns ``model`` itself; strategies that wrap the model override this and
        must not modify ``model`` (training may go on after an export).
        """
        return model

    def trainable_modules(
        self, model: nn.Module, plan: Plan | None, arch: ArchSpec
    ) -> list[nn.Module]:
        """Modules whose parameters train, read from the plan and the ``train_*`` options."""
        modules: list[nn.Module] = []
        layers = arch.layers(model)
        if plan is not None:
            modules += [layers[i] for i in plan.trainable_layers]
        if self.train_embeddings:
            modules.append(arch.embeddings(model))
        if self.train_lm_head:
            modules.append(arch.lm_head(model))
        if self.train_norms:
            modules.append(arch.final_norm(model))
            for layer in layers:
                modules += arch.norms(layer)
        return modules

    @staticmethod
    def _names_of(model: nn.Module, modules: list[nn.Module]) -> frozenset[str]:
        wanted = {id(p) for m in modules for p in m.parameters()}
        return frozenset(n for n, p in model.named_parameters() if id(p) in wanted)

    # -- serialisation --------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """``{"class_path": ..., "init_args": {...}}`` of this expander (JSON-serialisable)."""
        args = {}
        for klass in type(self).__mro__:
            if klass is object or "__init__" not in klass.__dict__:
                continue
            for pname in inspect.signature(klass.__init__).parameters:
                if pname not in ("self", "args", "kwargs") and hasattr(self, pname):
                    args.setdefault(pname, getattr(self, pname))
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": args}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config()["init_args"].items())
        return f"{type(self).__name__}({args})"


_REGISTRY: dict[str, type[Expander]] = {}


def register_expander(cls: type[Expander]) -> type[Expander]:
    """Class decorator: register an :class:`Expander` subclass under its class name."""
    if not (isinstance(cls, type) and issubclass(cls, Expander)):
        raise TypeError(f"{cls!r} is not an Expander subclass.")
    name = cls.__name__
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(
            f"An expander named '{name}' is already registered ({_REGISTRY[name].__module__}); "
            "choose another class name."
        )
    cls.name = name
    _REGISTRY[name] = cls
    return cls


def expander_names() -> list[str]:
    """Registered expander names, sorted."""
    return sorted(_REGISTRY)


def get_expander(name: str) -> type[Expander]:
    """The registered expander class called ``name``."""
    if name not in _REGISTRY:
        raise KeyError(f"Unknown expander '{name}'. Registered: {', '.join(expander_names())}.")
    return _REGISTRY[name]


def build_expander(config: dict[str, Any] | str) -> Expander:
    """Instantiate an expander from a name or ``{"class_path"|"name": ..., "init_args": {...}}``."""
    if isinstance(config, str):
        return get_expander(config)()
    name = config.get("name") or config["class_path"].rsplit(".", 1)[-1]
    return get_expander(name)(**config.get("init_args", {}))
