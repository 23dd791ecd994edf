"""Planning an expansion without building a model: the layer map and parameter counts of ``plan``.

The counts are those :func:`blockexp.io.streaming.write_expanded` writes (:func:`plan_tensors`):
output tensors planned from ``config.json`` and a tensor index, which is the checkpoint's
safetensors headers when the base directory holds safetensors weights, and otherwise a *virtual*
index, the tensors :func:`blockexp.layers.shapes.param_shapes` derives from config.json alone (a
directory with only config.json, or the path of a config.json, such as the config of a 7B model
not downloaded). No torch, no transformers: the numbers equal those of the model built on the
meta device (:func:`blockexp.expanders.dry_run.plan_summary`, tested for every architecture).

:func:`cannot_plan` says when this does not apply, and why: a hub id, a family whose
:class:`~blockexp.layers.ArchSpec` declares no :class:`~blockexp.layers.shapes.ParamLayout`,
custom modelling code (``auto_map``), or a strategy whose parameters are not its plan and
``train_*`` options (it builds modules, as LoRA and MoE do). ``plan`` then builds the model on
the meta device.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

from blockexp.io.load import local_path
from blockexp.io.safetensors import DTYPES, INDEX_FILE, SINGLE_FILE, SafetensorsEntry, source_index
from blockexp.io.streaming import plan_tensors, read_config
from blockexp.layers import LayerSpec, Plan, TrainOptions, get_arch
from blockexp.layers.plan import summary
from blockexp.layers.shapes import param_shapes, resolve_config

__all__ = ["cannot_plan", "plan_summary", "virtual_index"]


class Expander(Protocol):
    """What planning needs of a strategy (:class:`blockexp.expanders.Expander` provides it)."""

    train_options: TrainOptions

    def plan(self, num_layers: int) -> Plan | None: ...

    def config(self) -> dict[str, Any]: ...

    def plan_describes_parameters(self) -> bool: ...


def _has_weights(path: Path) -> bool:
    return path.is_dir() and ((path / SINGLE_FILE).is_file() or (path / INDEX_FILE).is_file())


def cannot_plan(expander: Expander, base: str | os.PathLike) -> str | None:
    """``None`` if :func:`plan_summary` can plan ``expander`` on ``base``, else the reason.

    Raises:
        FileNotFoundError: ``base`` looks like a path but does not exist.
        StreamingError: a local base whose config.json is missing, not JSON or lacks a field.
        UnsupportedArchitectureError: its ``model_type`` has no ArchSpec (naming the supported
            ones; a model built by transformers would be refused by every strategy as well).
    """
    if not expander.plan_describes_parameters():
        return (
            f"{type(expander).__name__} adds modules that a plan does not describe, so its "
            "parameters are counted on the model"
        )
    path = local_path(str(base))
    if path is None:
        return f"{base} is a hub id (its config is read by transformers)"
    config = read_config(path)
    if _has_weights(path):
        return None
    if getattr(config, "auto_map", None):
        return f"{base} names custom modelling code (auto_map), whose tensors config.json omits"
    if get_arch(config.model_type).shapes is None:
        return f"the {config.model_type} ArchSpec declares no ParamLayout (ArchSpec.shapes)"
    return None


def virtual_index(config: dict[str, Any], source: Path) -> dict[str, SafetensorsEntry]:
    """The tensor index of a checkpoint of ``config`` that is not there: names and shapes from
    :func:`~blockexp.layers.shapes.param_shapes`, the config's dtype (float32 if it names none),
    ``source`` (the config.json) as the file. Planning reads names and shapes only; streaming
    refuses a base without weights (:func:`~blockexp.io.streaming.can_stream`), so no data is
    ever read from these entries."""
    names = {d.torch_name: name for name, d in DTYPES.items()}
    dtype = names.get(str(config.get("dtype") or config.get("torch_dtype")), "F32")
    size = DTYPES[dtype].itemsize
    return {
        name: SafetensorsEntry(source, dtype, shape, 0, math.prod(shape) * size)
        for name, shape in param_shapes(config).items()
    }


def plan_summary(base: str | os.PathLike, expander: Expander) -> dict[str, Any]:
    """What :func:`blockexp.expanders.dry_run.plan_summary` reports (the same keys and numbers),
    for a base and strategy :func:`cannot_plan` accepts, without a model.

    Keys: ``model_type``, ``strategy``, ``expander``, ``base_num_layers``, ``base_params``,
    ``num_layers``, ``total_params``, ``trainable_params`` and ``layers`` (one entry per output
    layer: ``index``, ``source``, ``init``, ``zero_out``, ``trainable``; a strategy without a
    plan lists the base layers with ``trainable`` ``None``).
    """
    path = Path(base).expanduser()
    config = read_config(path)
    if _has_weights(path):
        entries = source_index(path)
    else:
        data = vars(config)
        entries = virtual_index(data, path if path.is_file() else path / "config.json")
        # The family's default when config.json omits it (Gemma ties by default).
        tied = resolve_config(data)["tie_word_embeddings"]
        config = SimpleNamespace(**{**data, "tie_word_embeddings": tied})
    base_layers = int(config.num_hidden_layers)
    plan = expander.plan(base_layers)
    identity = Plan(base_layers, tuple(LayerSpec(i, (i,), "base") for i in range(base_layers)))
    tensors = plan_tensors(config, plan or identity, entries)
    total, _, trainable = tensors.counts(expander.train_options)
    return summary(
        plan,
        model_type=config.model_type,
        strategy=type(expander).__name__,
        expander=expander.config(),
        base_num_layers=base_layers,
        base_params=tensors.base_params,
        num_layers=(plan or identity).num_layers,
        total_params=total,
        trainable_params=trainable,
    )
