"""The expansion plan: a pure description of a depth-changing expansion.

A :class:`Plan` lists the layers of the expanded model; each :class:`LayerSpec` says which base
layer(s) its weights come from, how they are initialised and whether the layer trains. The same
plan drives the dry run (``blockexp plan``), in-memory surgery, on-disk expansion and freezing, so
these can never disagree.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["Init", "LayerSpec", "Plan", "PlanError", "summary"]

Init = Literal["base", "copy", "mean"]


class PlanError(ValueError):
    """An expansion plan is inconsistent with the base model."""


@dataclass(frozen=True)
class LayerSpec:
    """One layer of the expanded model.

    Attributes:
        index: position in the expanded model.
        source: base-layer indices the weights come from (one for ``base``/``copy``).
        init: ``base`` (the original layer, unchanged), ``copy`` (a copy of one base layer) or
            ``mean`` (element-wise mean of the source layers, norms included).
        zero_out: whether the residual-stream writers (``o_proj``, ``down_proj`` and their biases)
            are zeroed, which makes the layer an exact identity at initialisation.
        trainable: whether the layer's parameters train.
    """

    index: int
    source: tuple[int, ...]
    init: Init
    zero_out: bool = False
    trainable: bool = False

    @property
    def is_new(self) -> bool:
        """True for layers that do not exist in the base model."""
        return self.init != "base"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["source"] = list(self.source)
        return d

    def describe(self) -> str:
        """Short human-readable origin, e.g. ``copy(3)+zero`` or ``mean(1,2)``."""
        text = f"{self.init}({','.join(map(str, self.source))})"
        return text + ("+zero" if self.zero_out else "")


@dataclass(frozen=True)
class Plan:
    """Layer map of an expansion, a pure function of the base depth.

    Attributes:
        base_num_layers: depth of the base model.
        layers: the expanded model's layers, in order.
        strategy: name of the expander that made the plan.
    """

    base_num_layers: int
    layers: tuple[LayerSpec, ...]
    strategy: str = ""

    def __post_init__(self) -> None:
        for position, spec in enumerate(self.layers):
            if spec.index != position:
                raise PlanError(f"Layer spec at position {position} has index {spec.index}.")
            if not spec.source:
                raise PlanError(f"Layer {position} has no source layer.")
            for src in spec.source:
                if not 0 <= src < self.base_num_layers:
                    raise PlanError(
                        f"Layer {position} copies base layer {src}, but the base model has "
                        f"{self.base_num_layers} layers (0..{self.base_num_layers - 1})."
                    )
            if spec.init in ("base", "copy") and len(spec.source) != 1:
                raise PlanError(f"Layer {position}: init '{spec.init}' needs exactly one source.")
            if spec.init not in ("base", "copy", "mean"):
                raise PlanError(f"Layer {position}: unknown init '{spec.init}'.")
        kept = [s.source[0] for s in self.layers if s.init == "base"]
        if len(kept) != len(set(kept)):
            raise PlanError("A base layer is kept more than once; use init='copy' for repeats.")

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def new_layers(self) -> list[int]:
        """Indices (in the expanded model) of layers not present in the base."""
        return [s.index for s in self.layers if s.is_new]

    @property
    def trainable_layers(self) -> list[int]:
        return [s.index for s in self.layers if s.trainable]

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "base_num_layers": self.base_num_layers,
            "num_layers": self.num_layers,
            "new_layers": self.new_layers,
            "trainable_layers": self.trainable_layers,
            "layers": [s.to_dict() for s in self.layers],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        layers = tuple(
            LayerSpec(
                index=int(d["index"]),
                source=tuple(int(s) for s in d["source"]),
                init=d["init"],
                zero_out=bool(d.get("zero_out", False)),
                trainable=bool(d.get("trainable", False)),
            )
            for d in data["layers"]
        )
        return cls(int(data["base_num_layers"]), layers, data.get("strategy", ""))

    @classmethod
    def from_groups(
        cls, base_num_layers: int, groups: Iterable[list[LayerSpec]], strategy: str
    ) -> Plan:
        """Build a plan from lists of specs whose ``index`` is ignored and renumbered in order."""
        flat = [spec for group in groups for spec in group]
        layers = tuple(
            LayerSpec(i, s.source, s.init, s.zero_out, s.trainable) for i, s in enumerate(flat)
        )
        return cls(base_num_layers, layers, strategy)


def summary(
    plan: Plan | None,
    *,
    model_type: str,
    strategy: str,
    expander: dict[str, Any],
    base_num_layers: int,
    base_params: int,
    num_layers: int,
    total_params: int,
    trainable_params: int,
) -> dict[str, Any]:
    """What ``plan`` prints (its ``--json`` object), however the counts were made: the arguments
    and the layer map, one row per layer of ``plan`` (without a plan, the base's layers with
    ``trainable`` unknown: ``None``)."""
    if plan is not None:
        layers = [s.to_dict() for s in plan.layers]
    else:
        layers = [
            {"index": i, "source": [i], "init": "base", "zero_out": False, "trainable": None}
            for i in range(base_num_layers)
        ]
    return {
        "model_type": model_type,
        "strategy": strategy,
        "expander": expander,
        "base_num_layers": base_num_layers,
        "base_params": base_params,
        "num_layers": num_layers,
        "total_params": total_params,
        "trainable_params": trainable_params,
        "layers": layers,
    }
