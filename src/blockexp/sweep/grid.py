"""A sweep's grid expanded into cells: every combination of the axes' values, in file order.

An axis is a config group (``expander: [llama_pro, lora]``), ``seed``, a dotted fit option
(``model.optim.lr: [1.0e-3, 2.0e-3]``), or a labelled axis whose values are sets of overrides
(``strategy: {LlamaPro: {expander: llama_pro}, LoRA: {expander: lora, model.expander.r: 8}}``).
A cell's id names its values (``strategy-LoRA__seed-1``) and is its directory's name.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from blockexp.errors import UsageError

__all__ = ["Cell", "expand_grid", "split_overrides"]

_UNSAFE = re.compile(r"[^A-Za-z0-9.+-]+")


@dataclass
class Cell:
    """One run of a sweep: its id, the values that name it, and the overrides that make it."""

    id: str
    params: dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)


def _slug(value: Any) -> str:
    text = _UNSAFE.sub("_", str(value)).strip("_")
    return text or "_"


def _axis_values(axis: str, values: Any, where: str) -> list[tuple[Any, dict[str, Any]]]:
    """(label, overrides) for each value of an axis."""
    if isinstance(values, dict):  # labelled sets of overrides
        out = []
        for label, overrides in values.items():
            if not isinstance(overrides, dict):
                raise UsageError(
                    f"{where}: grid.{axis}.{label} is a mapping of overrides (e.g. "
                    f"{{expander: lora}}), not {overrides!r}"
                )
            out.append((label, dict(overrides)))
        return out
    if not isinstance(values, list) or not values:
        raise UsageError(
            f"{where}: grid.{axis} is a non-empty list of values or a mapping of labelled "
            f"overrides, not {values!r}"
        )
    return [(value, {axis: value}) for value in values]


def split_overrides(overrides: dict[str, Any], groups: tuple[str, ...]) -> tuple[dict, dict]:
    """(``group -> option``, ``dotted key -> value``) of an overrides mapping; ``seed`` becomes
    ``seed_everything``."""
    chosen: dict[str, str] = {}
    dotted: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in groups:
            if not isinstance(value, str):
                raise UsageError(f"override {key}: {value!r}: a config group takes an option name")
            chosen[key] = value
        elif key == "seed":
            dotted["seed_everything"] = value
        else:
            dotted[key] = value
    return chosen, dotted


def expand_grid(grid: dict[str, Any], fixed: dict[str, Any], where: str) -> list[Cell]:
    """Every cell of ``grid`` (the product of its axes, the first axis varying slowest), each
    with ``fixed`` overrides under its own."""
    axes = [(axis, _axis_values(axis, values, where)) for axis, values in grid.items()]
    cells: list[Cell] = []
    seen: dict[str, dict] = {}
    for combo in itertools.product(*(values for _, values in axes)):
        params = {axis: label for (axis, _), (label, _) in zip(axes, combo, strict=True)}
        overrides = dict(fixed)
        for _, cell_overrides in combo:
            overrides.update(cell_overrides)
        short = {axis: axis.rsplit(".", 1)[-1] for axis, _ in axes}
        cell_id = "__".join(f"{_slug(short[a])}-{_slug(v)}" for a, v in params.items()) or "run"
        if cell_id in seen:
            raise UsageError(
                f"{where}: cells {seen[cell_id]} and {params} get the same directory name "
                f"{cell_id!r}; give the values distinct labels"
            )
        seen[cell_id] = params
        cells.append(Cell(id=cell_id, params=params, overrides=overrides))
    return cells
