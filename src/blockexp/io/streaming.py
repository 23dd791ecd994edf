"""Streaming on-disk expansion of a (sharded) safetensors checkpoint, tensor by tensor.

The in-memory path (load the base, apply the plan, ``save_pretrained``) needs about twice the
expanded model in RAM. This module writes the same expanded checkpoint while holding at most one
*chunk* of one tensor in memory (``chunk_bytes``, 4 MiB by default), so peak memory does not grow
with the model:

1. The base's ``config.json`` is read as plain JSON (no model is built and the transformers
   modelling stack is not imported; torch is imported only to average or cast data). The
   expander's :class:`~blockexp.layers.Plan` and the architecture's
   :meth:`~blockexp.layers.ArchSpec.update_config` give the new config
   (``num_hidden_layers``, per-layer lists such as ``layer_types``; every other field is kept as
   written); the trainable parameter names and the parameter counts come from the plan and the
   safetensors headers, so the manifest is the one the in-memory path writes (tested).
2. The safetensors headers of the base (``model.safetensors`` or ``model.safetensors.index.json``
   and its shards) are parsed; every output tensor gets its source(s) from the plan (decoder-layer
   tensor names are parsed with :meth:`~blockexp.layers.ArchSpec.split_layer_key`, never by
   substring), and the output shards are laid out up front (their headers are known before any
   data is read).
3. Each output tensor is produced in chunks (:func:`~blockexp.io.safetensors.write_shards`):
   ``base``/``copy`` tensors are copied byte for byte
   (``os.copy_file_range`` when the kernel offers it), residual writers of identity blocks
   (:meth:`~blockexp.layers.ArchSpec.is_residual_writer_param`) are zeros (skipped over, so they
   become sparse regions where the file system supports it), and ``mean``
   tensors are averaged in float32 and cast back, in the same order of operations as
   :func:`~blockexp.layers.surgery.average_layers`, so the result is bitwise identical to the
   in-memory expansion.

Data is read with ordinary file reads (no ``mmap``), so the page cache holding the base does not
count towards the process's resident memory. The output is a standard Hugging Face directory:
shards named ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json`` (or one
``model.safetensors``), ``config.json``, ``blockexp_manifest.json`` and the base's other files
(tokenizer, ``generation_config.json``, chat template, README, ...: :mod:`blockexp.io.portable`),
written inside :class:`~blockexp.io.outputs.atomic_output_dir`.

Tied embeddings: when the config ties the LM head to the token embedding, only the embedding is
stored (as ``save_pretrained`` does); an ``lm_head.weight`` present in the base is dropped.

Only strategies that declare ``streamable = True`` stream: their expansion is fully described by
the plan, the ``train_*`` options and :meth:`~blockexp.expanders.Expander.describe` (checked when
the strategy is registered). :func:`can_stream` says why another one cannot, and
``blockexp expand`` then falls back to in-memory expansion with that message. This module works
on the layer wing (:mod:`blockexp.layers`) and does not import the expanders.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Protocol

from blockexp.io.manifest import manifest_dict, write_manifest
from blockexp.io.outputs import atomic_output_dir
from blockexp.io.safetensors import (
    DEFAULT_CHUNK_BYTES,
    DTYPES,
    INDEX_FILE,
    SINGLE_FILE,
    OutputTensor,
    SafetensorsEntry,
    StreamingError,
    parse_size,
    source_index,
    target_dtype,
    write_shards,
)
from blockexp.layers import (
    Plan,
    TrainOptions,
    get_arch,
    trainable_parameter_names,
)

if TYPE_CHECKING:
    import torch


class Expander(Protocol):
    """What streaming needs of a strategy (:class:`blockexp.expanders.Expander` provides it);
    structural, so that this module depends on the layer wing only."""

    streamable: bool
    train_options: TrainOptions

    def plan(self, num_layers: int) -> Plan | None: ...

    def describe(self, num_layers: int) -> dict[str, Any]: ...

    def config(self) -> dict[str, Any]: ...


__all__ = [
    "TensorPlan",
    "can_stream",
    "plan_tensors",
    "read_config",
    "stream_expand",
    "write_expanded",
]


def read_config(base: str | os.PathLike) -> SimpleNamespace:
    """``config.json`` of a model directory (or that file itself) as an attribute namespace
    (the fields exactly as written), checked to name a supported architecture and its depth."""
    path = Path(base)
    path = path if path.is_file() else path / "config.json"
    if not path.is_file():
        raise StreamingError(f"{base} has no config.json; is it a Hugging Face model directory?")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise StreamingError(f"{path} is not valid JSON: {err}") from err
    if "model_type" not in data:
        raise StreamingError(f"{path} has no 'model_type'.")
    get_arch(data["model_type"])  # an unsupported architecture is refused before anything else
    if "num_hidden_layers" not in data:
        raise StreamingError(f"{path} has no 'num_hidden_layers'.")
    return SimpleNamespace(**data)


def can_stream(expander: Expander, base: str | os.PathLike) -> str | None:
    """``None`` if ``expander`` on ``base`` can be streamed, else the reason it cannot.

    Raises:
        ExpanderConfigError: if the expander does not fit the base depth (a user error either way).
    """
    if not getattr(type(expander), "streamable", False):
        return (
            f"{type(expander).__name__} is not streamable (it changes more than the layer stack "
            "a plan describes), so it is applied in memory"
        )
    path = Path(base).expanduser()
    if not path.is_dir():
        return f"{base} is not a local directory (hub ids are expanded in memory)"
    if not ((path / SINGLE_FILE).is_file() or (path / INDEX_FILE).is_file()):
        return f"{base} has no safetensors weights, so it is expanded in memory"
    if expander.plan(int(read_config(path).num_hidden_layers)) is None:
        return (
            f"{type(expander).__name__} does not change depth (no plan), so it is applied in memory"
        )
    return None


def _build_outputs(
    entries: dict[str, SafetensorsEntry],
    plan: Plan,
    arch,
    drop: set[str],
    dtype: torch.dtype | None,
) -> list[OutputTensor]:
    by_layer: dict[int, dict[str, SafetensorsEntry]] = {}
    outputs: list[OutputTensor] = []
    for name, entry in entries.items():
        parsed = arch.split_layer_key(name)
        if parsed is None:
            if name not in drop:
                outputs.append(
                    OutputTensor(name, target_dtype(entry, dtype), entry.shape, [entry], "copy")
                )
            continue
        by_layer.setdefault(parsed[0], {})[parsed[1]] = entry
    found = sorted(by_layer)
    if found != list(range(plan.base_num_layers)):
        raise StreamingError(
            f"The checkpoint stores decoder layers {found[:3]}...{found[-3:]} under "
            f"'{arch.layer_prefix}', but config.json says {plan.base_num_layers} layers."
        )
    for spec in plan.layers:
        first = by_layer[spec.source[0]]
        for rest, entry in first.items():
            op = "copy"
            sources = [entry]
            if spec.zero_out and arch.is_residual_writer_param(rest):
                op = "zero"
            elif spec.init == "mean" and DTYPES[entry.dtype].is_floating_point:
                op = "mean"
                try:
                    sources = [by_layer[i][rest] for i in spec.source]
                except KeyError as err:
                    raise StreamingError(f"Layer {err} has no tensor '{rest}' to average.") from err
                if len({(s.dtype, s.shape) for s in sources}) != 1:
                    raise StreamingError(f"Cannot average '{rest}': its shapes or dtypes differ.")
            name = f"{arch.layer_prefix}{spec.index}.{rest}"
            outputs.append(OutputTensor(name, target_dtype(entry, dtype), entry.shape, sources, op))
    return outputs


def _tied_drop(config: SimpleNamespace, arch, entries: dict[str, SafetensorsEntry]) -> set[str]:
    """Tensors not written: the LM head when the config ties it to a stored embedding."""
    drop = set()
    if getattr(config, "tie_word_embeddings", False):
        embed = ".".join(arch.embed_path) + ".weight"
        head = ".".join(arch.lm_head_path) + ".weight"
        if embed in entries:
            drop.add(head)
    return drop


@dataclass
class TensorPlan:
    """Every output tensor of an expansion, planned from config.json and a checkpoint's tensor
    index (its safetensors headers, or the shapes :func:`blockexp.layers.shapes.param_shapes`
    gives): what streaming writes and what ``plan`` counts."""

    config: SimpleNamespace
    arch: Any
    base_layers: int
    plan: Plan
    entries: dict[str, SafetensorsEntry]
    drop: set[str]
    outputs: list[OutputTensor]

    @property
    def base_params(self) -> int:
        return sum(math.prod(e.shape) for n, e in self.entries.items() if n not in self.drop)

    def counts(self, train_options: TrainOptions) -> tuple[int, frozenset[str], int]:
        """``(total_params, trainable_names, trainable_params)`` of the output."""
        tied = bool(getattr(self.config, "tie_word_embeddings", False))
        names = (out.name for out in self.outputs)
        trainable = trainable_parameter_names(
            self.arch, names, self.plan.trainable_layers, train_options, tied
        )
        numel = {out.name: math.prod(out.shape) for out in self.outputs}
        return sum(numel.values()), trainable, sum(numel[name] for name in trainable)


def plan_tensors(
    config: SimpleNamespace,
    plan: Plan,
    entries: dict[str, SafetensorsEntry],
    dtype: torch.dtype | None = None,
) -> TensorPlan:
    """Plan every output tensor of ``plan`` applied to the checkpoint ``entries`` describe
    (``dtype``: cast floating tensors to it; ``None`` keeps each tensor's)."""
    arch = get_arch(config.model_type)
    drop = _tied_drop(config, arch, entries)
    outputs = _build_outputs(entries, plan, arch, drop, dtype)
    return TensorPlan(config, arch, plan.base_num_layers, plan, entries, drop, outputs)


def _prepare(base: str, expander: Expander, target: Any = None) -> TensorPlan:
    """Check that ``expander`` on ``base`` streams, then plan every output tensor."""
    reason = can_stream(expander, base)
    if reason is not None:
        raise StreamingError(f"Cannot stream: {reason}.")
    config = read_config(base)
    plan = expander.plan(int(config.num_hidden_layers))
    return plan_tensors(config, plan, source_index(base), target)


def write_expanded(
    base: str | os.PathLike,
    dest: str | os.PathLike,
    expander: Expander,
    dtype: str | torch.dtype | None = "auto",
    max_shard_size: str | int = "5GB",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    trust_remote_code: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Write the expanded weights and config of ``base`` into the existing directory ``dest``.

    Not atomic by itself (see :func:`stream_expand`). Tokenizer files are not copied.

    Args:
        base: local Hugging Face directory with ``config.json`` and safetensors weights.
        dest: an existing, empty directory.
        expander: a depth-changing strategy (see :func:`can_stream`).
        dtype: ``auto`` keeps each tensor's dtype; otherwise floating tensors are cast to it.
        max_shard_size: largest output shard (``5GB``, ``500MB`` or bytes).
        chunk_bytes: most bytes of one tensor processed at a time.
        trust_remote_code: unused here (config.json is read as plain JSON); kept so the
            signature matches the in-memory path.
        progress: called as ``progress(bytes_done, bytes_total)`` after each tensor.

    Returns:
        The manifest (also written to ``dest/blockexp_manifest.json``).
    """
    from blockexp.io.load import resolve_dtype

    base = str(Path(base).expanduser())
    dest = Path(dest)
    target = None  # keep each tensor's dtype; otherwise a torch dtype (torch is imported to cast)
    if dtype is not None and not (isinstance(dtype, str) and dtype == "auto"):
        target = resolve_dtype(dtype)
    # No model object is built (not even on the meta device): the plan, the config and the
    # manifest come from config.json and the safetensors headers alone.
    prep = _prepare(base, expander, target)
    config, arch, plan, outputs = prep.config, prep.arch, prep.plan, prep.outputs
    write_shards(outputs, dest, parse_size(max_shard_size), chunk_bytes, progress)

    out_config = copy.deepcopy(config)
    arch.update_config(out_config, plan)
    out_dtype = target
    if out_dtype is None:
        float_dtypes = {o.dtype for o in outputs if DTYPES[o.dtype].is_floating_point}
        out_dtype = DTYPES[float_dtypes.pop()] if len(float_dtypes) == 1 else None
    if out_dtype is not None:
        out_config.dtype = str(out_dtype).removeprefix("torch.")
        if hasattr(out_config, "torch_dtype"):  # older configs name the field torch_dtype
            out_config.torch_dtype = out_config.dtype
    (dest / "config.json").write_text(json.dumps(vars(out_config), indent=2, sort_keys=True) + "\n")
    total_params, trainable, trainable_params = prep.counts(expander.train_options)
    manifest = manifest_dict(
        expander,
        base,
        prep.base_layers,
        prep.base_params,
        num_layers=plan.num_layers,
        total_params=total_params,
        trainable_params=trainable_params,
        plan=plan,
        trainable_names=trainable,
        extra=expander.describe(prep.base_layers),
    )
    manifest["streamed"] = True
    write_manifest(dest, manifest)
    return manifest


def stream_expand(
    base: str | os.PathLike,
    out: str | os.PathLike,
    expander: Expander,
    dtype: str | torch.dtype | None = "auto",
    overwrite: bool = False,
    max_shard_size: str | int = "5GB",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    trust_remote_code: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Expand a local checkpoint on disk, atomically: weights, config, manifest and every other
    file of the base directory but its weights (:func:`blockexp.io.portable.carry_base_files`).

    Peak memory is about ``chunk_bytes`` (times a few for ``mean`` tensors) plus the Python
    process, whatever the model size. Refuses to write into or over the base directory.

    Returns:
        The manifest.
    """
    base = Path(base).expanduser()
    with atomic_output_dir(out, protect=[base], overwrite=overwrite) as tmp:
        manifest = write_expanded(
            base, tmp, expander, dtype, max_shard_size, chunk_bytes, trust_remote_code, progress
        )
        from blockexp.io.portable import finish_output

        # The base's other files (tokenizer, generation config, chat template, README, ...),
        # and configs that transformers 4.x reads as 5.x does (blockexp.io.portable).
        finish_output(tmp, base)
    return manifest
