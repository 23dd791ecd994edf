"""The :class:`Expander` contract: what a strategy implements and declares.

An expander turns a loaded base model into the model that will be trained and says which of its
parameters train. Depth-changing strategies implement :meth:`Expander.plan` only: the base class
applies the plan (:func:`blockexp.layers.surgery.apply_plan`) and selects the trainable parameter names
(:func:`blockexp.layers.trainable_parameter_names`). Strategies that keep the depth override
:meth:`Expander.expand`. Each strategy declares its capabilities as class attributes, and
:func:`blockexp.expanders.registry.register_expander` refuses a class whose declarations
contradict what it implements.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

from blockexp.layers import (
    ArchSpec,
    Module,
    Plan,
    TrainOptions,
    get_arch,
    trainable_parameter_names,
)

__all__ = [
    "Expander",
    "Expansion",
    "ExpanderConfigError",
]


class ExpanderConfigError(ValueError):
    """An expander's arguments do not fit the base model (or its class declarations do not fit
    its implementation)."""


@dataclass
class Expansion:
    """Result of :meth:`Expander.expand`.

    Attributes:
        model: the expanded model (modified in place).
        plan: the layer map, or ``None`` for strategies that keep the depth.
        trainable: names of the parameters that train (as in ``model.named_parameters()``).
        extra: strategy-specific facts recorded in the manifest.
    """

    model: Module
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


def is_tied(model: Module, arch: ArchSpec) -> bool:
    """Whether the model's LM head is its token embedding tensor."""
    return arch.lm_head(model).weight is arch.embeddings(model).weight


def parameter_names(model: Module, modules) -> frozenset[str]:
    """Names, in ``model``, of the parameters of ``modules`` (modules found by structure)."""
    wanted = {id(p) for module in modules for p in module.parameters()}
    return frozenset(n for n, p in model.named_parameters() if id(p) in wanted)


class Expander:
    """A knowledge-injection strategy.

    Subclasses are registered by class name (see :func:`register_expander`) and are selected in
    configs with ``class_path`` or on the command line with ``--expander Name``. A subclass takes
    its own arguments and passes the ``train_*`` options on with ``**kwargs``.

    Capabilities, declared as class attributes and checked at registration:

    * ``streamable``: the expansion is fully described by :meth:`plan`, the ``train_*`` options
      and :meth:`describe`, so ``blockexp expand`` may apply it to a checkpoint tensor by tensor.
      Such a class implements :meth:`plan` and overrides neither :meth:`expand` nor
      :meth:`select_trainable`.
    * ``preserves_function``: for *every* choice of arguments the expanded model computes the
      base function at initialisation. A strategy for which it depends on the arguments says
      ``False`` here and answers per instance in :meth:`is_identity`.
    * ``has_export_hook``: :meth:`export_model` returns something else than the training model
      (LoRA merges adapters, MoE writes its own format); such a class overrides it.
    * ``custom_export_format``: exported directories need :meth:`load_exported` (overridden)
      instead of ``AutoModelForCausalLM.from_pretrained``.

    Args:
        train_embeddings: also train the input token embedding.
        train_lm_head: also train the output projection (the same tensor as the embedding when
            the model ties them).
        train_norms: also train every normalisation layer (all blocks and the final norm).
    """

    name: ClassVar[str] = ""
    streamable: ClassVar[bool] = False
    preserves_function: ClassVar[bool] = False
    has_export_hook: ClassVar[bool] = False
    custom_export_format: ClassVar[bool] = False

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

    def describe(self, num_layers: int) -> dict[str, Any]:
        """Strategy-specific facts for the manifest (``Expansion.extra``) of a base with
        ``num_layers`` layers; computed from the arguments alone, so streaming records the
        same."""
        return {}

    @property
    def train_options(self) -> TrainOptions:
        """What trains besides the plan's trainable layers."""
        return TrainOptions(
            embeddings=self.train_embeddings, lm_head=self.train_lm_head, norms=self.train_norms
        )

    def is_identity(self) -> bool:
        """Whether this instance's expansion computes the base function at initialisation."""
        return type(self).preserves_function

    @classmethod
    def plan_describes_parameters(cls) -> bool:
        """Whether the expanded model's parameters follow from :meth:`plan` and
        :attr:`train_options` alone (the class overrides neither :meth:`expand` nor
        :meth:`select_trainable`), so ``plan`` counts them from tensor names and shapes
        (:mod:`blockexp.io.planning`) instead of building the model."""
        return all(
            inspect.getattr_static(cls, name) is inspect.getattr_static(Expander, name)
            for name in ("expand", "select_trainable")
        )

    def expand(self, model: Module) -> Expansion:
        """Apply the strategy to ``model`` (in place) and return the :class:`Expansion`."""
        arch = get_arch(model.config)
        num_layers = len(arch.layers(model))
        plan = self.plan(num_layers)
        if plan is not None:
            from blockexp.layers.surgery import apply_plan  # torch: only when a model is expanded

            apply_plan(model, plan, arch)
        trainable = self.select_trainable(model, plan, arch)
        return Expansion(model, plan, trainable, extra=self.describe(num_layers))

    def select_trainable(self, model: Module, plan: Plan | None, arch: ArchSpec) -> frozenset[str]:
        """Names of the parameters of ``model`` that train: the plan's trainable layers and the
        :attr:`train_options` (:func:`blockexp.layers.trainable_parameter_names`)."""
        return trainable_parameter_names(
            arch,
            (name for name, _ in model.named_parameters()),
            plan.trainable_layers if plan is not None else (),
            self.train_options,
            tied=is_tied(model, arch),
        )

    def export_model(self, model: Module) -> Module:
        """The plain ``transformers`` model to save for export (e.g. LoRA merges its adapters).

        The default returns ``model`` itself; strategies that wrap the model override this,
        declare ``has_export_hook = True`` and must not modify ``model`` (training may go on
        after an export).
        """
        return model

    @classmethod
    def load_exported(cls, directory: str | os.PathLike, dtype: Any = None) -> Module:
        """Load a directory written by exporting this strategy's model (eval mode)."""
        from transformers import AutoModelForCausalLM

        kwargs = {"dtype": dtype} if dtype is not None else {}
        return AutoModelForCausalLM.from_pretrained(directory, **kwargs).eval()

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
