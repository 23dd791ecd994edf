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
3. Each output tensor is produced in chunks: ``base``/``copy`` tensors are copied byte for byte
   (``os.copy_file_range`` when the kernel offers it), residual writers of identity blocks
   (:meth:`~blockexp.layers.ArchSpec.is_residual_writer_param`) are zeros (skipped over, so they
   become sparse regions where the file system supports it), and ``mean``
   tensors are averaged in float32 and cast back, in the same order of operations as
   :func:`~blockexp.layers.average_layers`, so the result is bitwise identical to the
   in-memory expansion.

Data is read with ordinary file reads (no ``mmap``), so the page cache holding the base does not
count towards the process's resident memory. The output is a standard Hugging Face directory:
shards named ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json`` (or one
``model.safetensors``), ``config.json``, ``blockexp_manifest.json`` and the base's other files
(tokenizer, ``generation_config.json``, chat template, README, ...: :mod:`blockexp.io.portable`),
written inside :class:`~blockexp.io.checkpoint.atomic_output_dir`.

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
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from blockexp.io.checkpoint import atomic_output_dir, manifest_dict, write_manifest
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
    "SafetensorsEntry",
    "StreamingError",
    "TOKENIZER_FILES",
    "can_stream",
    "parse_size",
    "plan_summary",
    "read_safetensors_header",
    "source_index",
    "stream_expand",
    "write_expanded",
]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_CHUNK_BYTES = 4 * 2**20
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
)


class _DType(NamedTuple):
    """A safetensors dtype as far as streaming needs it without torch: torch is imported only
    to convert data (``mean`` tensors, ``--dtype`` casts); copied and zero tensors need sizes."""

    torch_name: str
    itemsize: int
    is_floating_point: bool

    def __str__(self) -> str:  # as a torch dtype prints: ``torch.bfloat16``
        return f"torch.{self.torch_name}"

    def to_torch(self) -> torch.dtype:
        import torch

        return getattr(torch, self.torch_name)


# safetensors dtype names <-> torch dtypes (by name).
_DTYPES: dict[str, _DType] = {
    "F64": _DType("float64", 8, True),
    "F32": _DType("float32", 4, True),
    "F16": _DType("float16", 2, True),
    "BF16": _DType("bfloat16", 2, True),
    "I64": _DType("int64", 8, False),
    "I32": _DType("int32", 4, False),
    "I16": _DType("int16", 2, False),
    "I8": _DType("int8", 1, False),
    "U8": _DType("uint8", 1, False),
    "BOOL": _DType("bool", 1, False),
}
_NAMES = {v: k for k, v in _DTYPES.items()}
_BY_TORCH_NAME = {v.torch_name: v for v in _DTYPES.values()}


class StreamingError(ValueError):
    """The base checkpoint cannot be expanded by streaming."""


@dataclass(frozen=True)
class SafetensorsEntry:
    """Where one tensor lives in a safetensors file.

    Attributes:
        file: path of the ``.safetensors`` file.
        dtype: safetensors dtype name (``BF16``, ``F32``, ...).
        shape: tensor shape.
        start: absolute byte offset of the tensor data in ``file``.
        nbytes: size of the data in bytes.
    """

    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    nbytes: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


def parse_size(size: str | int) -> int:
    """``"5GB"``, ``"500MB"``, ``"2GiB"`` or an int -> bytes (GB = 10**9, GiB = 2**30)."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?B)?\s*", str(size).upper())
    if match is None:
        raise ValueError(f"Cannot parse size '{size}'; use e.g. 5GB, 500MB or a byte count.")
    number, unit, suffix = match.groups()
    base = 1024 if suffix == "IB" else 1000
    return int(float(number) * base ** " KMGT".index(unit or " "))


def read_safetensors_header(path: str | os.PathLike) -> dict[str, SafetensorsEntry]:
    """Parse the header of one ``.safetensors`` file (no tensor data is read)."""
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise StreamingError(f"{path} is not a safetensors file (shorter than 8 bytes).")
        n = int.from_bytes(raw, "little")
        if n > 100 * 2**20:
            raise StreamingError(f"{path}: implausible safetensors header size {n}.")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise StreamingError(f"{path}: corrupt safetensors header: {err}") from err
    data_start = 8 + n
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _DTYPES:
            raise StreamingError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}.")
        begin, end = info["data_offsets"]
        entries[name] = SafetensorsEntry(
            path, info["dtype"], tuple(info["shape"]), data_start + begin, end - begin
        )
    return entries


def source_index(base_dir: str | os.PathLike) -> dict[str, SafetensorsEntry]:
    """All tensors of a Hugging Face checkpoint directory (single file or sharded with index)."""
    base_dir = Path(base_dir)
    index_path = base_dir / INDEX_FILE
    if index_path.is_file():
        weight_map = json.loads(index_path.read_text())["weight_map"]
        entries: dict[str, SafetensorsEntry] = {}
        for shard in sorted(set(weight_map.values())):
            if not (base_dir / shard).is_file():
                raise StreamingError(f"{index_path} names {shard}, which does not exist.")
            entries.update(read_safetensors_header(base_dir / shard))
        missing = sorted(set(weight_map) - set(entries))
        if missing:
            raise StreamingError(f"{index_path}: tensors missing from their shards: {missing[:5]}")
        return entries
    if (base_dir / SINGLE_FILE).is_file():
        return read_safetensors_header(base_dir / SINGLE_FILE)
    raise StreamingError(
        f"{base_dir} has neither {SINGLE_FILE} nor {INDEX_FILE}; streaming expansion needs "
        "safetensors weights (convert .bin checkpoints with save_pretrained first)."
    )


def _read_config(base: str | os.PathLike) -> SimpleNamespace:
    """``config.json`` as an attribute namespace (the fields exactly as written)."""
    path = Path(base) / "config.json"
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
    if expander.plan(int(_read_config(path).num_hidden_layers)) is None:
        return (
            f"{type(expander).__name__} does not change depth (no plan), so it is applied in memory"
        )
    return None


@dataclass
class _Output:
    """One output tensor: its name, dtype and how it is produced."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    sources: list[SafetensorsEntry]
    op: str  # copy | zero | mean
    offset: int = 0

    @property
    def nbytes(self) -> int:
        n = _DTYPES[self.dtype].itemsize
        for d in self.shape:
            n *= d
        return n


@dataclass
class _Shard:
    tensors: list[_Output] = field(default_factory=list)
    size: int = 0


def _target_dtype(entry: SafetensorsEntry, dtype: torch.dtype | _DType | None) -> str:
    if dtype is None or not _DTYPES[entry.dtype].is_floating_point:
        return entry.dtype
    return _NAMES[_BY_TORCH_NAME[str(dtype).removeprefix("torch.")]]


def _build_outputs(
    entries: dict[str, SafetensorsEntry],
    plan: Plan,
    arch,
    drop: set[str],
    dtype: torch.dtype | None,
) -> list[_Output]:
    by_layer: dict[int, dict[str, SafetensorsEntry]] = {}
    outputs: list[_Output] = []
    for name, entry in entries.items():
        parsed = arch.split_layer_key(name)
        if parsed is None:
            if name not in drop:
                outputs.append(
                    _Output(name, _target_dtype(entry, dtype), entry.shape, [entry], "copy")
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
            elif spec.init == "mean" and _DTYPES[entry.dtype].is_floating_point:
                op = "mean"
                try:
                    sources = [by_layer[i][rest] for i in spec.source]
                except KeyError as err:
                    raise StreamingError(f"Layer {err} has no tensor '{rest}' to average.") from err
                if len({(s.dtype, s.shape) for s in sources}) != 1:
                    raise StreamingError(f"Cannot average '{rest}': its shapes or dtypes differ.")
            name = f"{arch.layer_prefix}{spec.index}.{rest}"
            outputs.append(_Output(name, _target_dtype(entry, dtype), entry.shape, sources, op))
    return outputs


def _shard(outputs: list[_Output], max_shard_bytes: int) -> list[_Shard]:
    shards: list[_Shard] = [_Shard()]
    for out in outputs:
        if shards[-1].tensors and shards[-1].size + out.nbytes > max_shard_bytes:
            shards.append(_Shard())
        shards[-1].tensors.append(out)
        shards[-1].size += out.nbytes
    return shards


def _header(shard: _Shard) -> bytes:
    # Like safetensors itself: larger dtypes first (keeps every tensor aligned), then by name.
    shard.tensors.sort(key=lambda o: (-_DTYPES[o.dtype].itemsize, o.name))
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for out in shard.tensors:
        out.offset = offset
        header[out.name] = {
            "dtype": out.dtype,
            "shape": list(out.shape),
            "data_offsets": [offset, offset + out.nbytes],
        }
        offset += out.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


class _Reader:
    """Open-file cache for the base shards (plain reads, no mmap)."""

    def __init__(self) -> None:
        self.files: dict[Path, Any] = {}

    def fd(self, path: Path) -> int:
        if path not in self.files:
            self.files[path] = open(path, "rb", buffering=0)  # noqa: SIM115
        return self.files[path].fileno()

    def read(self, entry: SafetensorsEntry, offset: int, n: int) -> bytes:
        data = os.pread(self.fd(entry.file), n, entry.start + offset)
        if len(data) != n:
            raise StreamingError(_truncated(entry.file))
        return data

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def _write_tensor(out: _Output, dst, reader: _Reader, chunk_bytes: int) -> None:
    src_dtype = _DTYPES[out.sources[0].dtype]
    dst_dtype = _DTYPES[out.dtype]
    numel = out.sources[0].numel
    if out.op == "zero":
        # Skip ahead instead of writing: the gap reads as zeros (a sparse region on file systems
        # that support it); the file is extended to its full size when the shard is closed.
        dst.seek(out.nbytes, os.SEEK_CUR)
        return
    src = out.sources[0]
    if out.op == "copy" and src_dtype == dst_dtype:
        _copy_range(reader.fd(src.file), src.start, dst, src.nbytes, src.file)
        return
    import torch  # only here: averaging and casting convert the data

    itemsize = src_dtype.itemsize
    src_dtype, dst_dtype = src_dtype.to_torch(), dst_dtype.to_torch()
    step = max(1, chunk_bytes // 4)  # elements per chunk (float32 accumulator)
    for first in range(0, numel, step):
        count = min(step, numel - first)
        views = [
            torch.frombuffer(
                bytearray(reader.read(s, first * itemsize, count * itemsize)), dtype=src_dtype
            )
            for s in out.sources
        ]
        if out.op == "mean":
            # Same operations as surgery.average_layers: fp32 sum in order, divide, cast back.
            acc = views[0].to(torch.float32).clone()
            for other in views[1:]:
                acc += other.to(torch.float32)
            result = (acc / len(views)).to(dst_dtype)
        else:
            result = views[0].to(dst_dtype)
        dst.write(result.contiguous().view(torch.uint8).numpy().tobytes())


def _truncated(path: Path) -> str:
    return f"{path} is truncated or corrupted (it ends inside a tensor); re-download or re-save it."


def _copy_range(src_fd: int, offset: int, dst, n: int, path: Path) -> None:
    dst.flush()
    end = dst.tell() + n
    dst_fd = dst.fileno()
    copy_range = getattr(os, "copy_file_range", None)
    left = n
    if copy_range is not None:
        try:
            while left:
                done = copy_range(src_fd, dst_fd, left, offset + n - left)
                if done == 0:
                    raise StreamingError(_truncated(path))
                left -= done
            dst.seek(end, os.SEEK_SET)
            return
        except OSError:  # e.g. file systems that refuse it: fall back to plain reads
            left = n
            dst.seek(end - n, os.SEEK_SET)
    while left:
        data = os.pread(src_fd, min(left, DEFAULT_CHUNK_BYTES), offset + n - left)
        if not data:
            raise StreamingError(_truncated(path))
        dst.write(data)
        left -= len(data)


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
class _Streamed:
    """What one streaming expansion reads and plans: from config.json and the headers only."""

    config: SimpleNamespace
    arch: Any
    base_layers: int
    plan: Plan
    entries: dict[str, SafetensorsEntry]
    drop: set[str]
    outputs: list[_Output]

    @property
    def base_params(self) -> int:
        return sum(math.prod(e.shape) for n, e in self.entries.items() if n not in self.drop)

    def counts(self, expander: Expander) -> tuple[int, frozenset[str], int]:
        """``(total_params, trainable_names, trainable_params)`` of the output."""
        tied = bool(getattr(self.config, "tie_word_embeddings", False))
        names = (out.name for out in self.outputs)
        trainable = trainable_parameter_names(
            self.arch, names, self.plan.trainable_layers, expander.train_options, tied
        )
        numel = {out.name: math.prod(out.shape) for out in self.outputs}
        return sum(numel.values()), trainable, sum(numel[name] for name in trainable)


def _prepare(base: str, expander: Expander, target: Any = None) -> _Streamed:
    """Check that ``expander`` on ``base`` streams, then plan every output tensor."""
    reason = can_stream(expander, base)
    if reason is not None:
        raise StreamingError(f"Cannot stream: {reason}.")
    config = _read_config(base)
    arch = get_arch(config.model_type)
    base_layers = int(config.num_hidden_layers)
    plan = expander.plan(base_layers)
    entries = source_index(base)
    drop = _tied_drop(config, arch, entries)
    outputs = _build_outputs(entries, plan, arch, drop, target)
    return _Streamed(config, arch, base_layers, plan, entries, drop, outputs)


def plan_summary(base: str | os.PathLike, expander: Expander) -> dict[str, Any]:
    """What :func:`blockexp.expanders.dry_run.plan_summary` reports (the same keys and numbers),
    for an expansion :func:`can_stream` accepts: from config.json and the safetensors headers,
    exactly as :func:`write_expanded` would count what it writes. No torch, no model.

    Raises:
        StreamingError: if ``expander`` on ``base`` cannot be streamed.
    """
    prep = _prepare(str(Path(base).expanduser()), expander)
    total, _, trainable = prep.counts(expander)
    plan = prep.plan
    return {
        "model_type": prep.config.model_type,
        "strategy": type(expander).__name__,
        "expander": expander.config(),
        "base_num_layers": prep.base_layers,
        "base_params": prep.base_params,
        "num_layers": plan.num_layers,
        "total_params": total,
        "trainable_params": trainable,
        "layers": [
            {
                "index": s.index,
                "source": list(s.source),
                "init": s.init,
                "zero_out": s.zero_out,
                "trainable": s.trainable,
            }
            for s in plan.layers
        ],
    }


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
    from blockexp.io.checkpoint import resolve_dtype

    base = str(Path(base).expanduser())
    dest = Path(dest)
    target = None  # keep each tensor's dtype; otherwise a torch dtype (torch is imported to cast)
    if dtype is not None and not (isinstance(dtype, str) and dtype == "auto"):
        target = resolve_dtype(dtype)
    # No model object is built (not even on the meta device): the plan, the config and the
    # manifest come from config.json and the safetensors headers alone.
    prep = _prepare(base, expander, target)
    config, arch, plan, outputs = prep.config, prep.arch, prep.plan, prep.outputs
    shards = _shard(outputs, parse_size(max_shard_size))
    total = sum(s.size for s in shards)
    names = (
        [SINGLE_FILE]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )
    reader = _Reader()
    done = 0
    weight_map: dict[str, str] = {}
    try:
        for shard, fname in zip(shards, names, strict=True):
            with open(dest / fname, "wb") as dst:
                dst.write(_header(shard))
                for out in shard.tensors:
                    _write_tensor(out, dst, reader, chunk_bytes)
                    weight_map[out.name] = fname
                    done += out.nbytes
                    if progress is not None:
                        progress(done, total)
                dst.truncate(dst.tell())  # materialise trailing zero tensors
    finally:
        reader.close()
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (dest / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")

    out_config = copy.deepcopy(config)
    arch.update_config(out_config, plan)
    out_dtype = target
    if out_dtype is None:
        float_dtypes = {o.dtype for o in outputs if _DTYPES[o.dtype].is_floating_point}
        out_dtype = _DTYPES[float_dtypes.pop()] if len(float_dtypes) == 1 else None
    if out_dtype is not None:
        out_config.dtype = str(out_dtype).removeprefix("torch.")
        if hasattr(out_config, "torch_dtype"):  # older configs name the field torch_dtype
            out_config.torch_dtype = out_config.dtype
    (dest / "config.json").write_text(json.dumps(vars(out_config), indent=2, sort_keys=True) + "\n")
    total_params, trainable, trainable_params = prep.counts(expander)
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


def copy_tokenizer_files(base: Path, dest: Path) -> list[str]:
    """Copy the tokenizer files of a local base directory; returns the names copied."""
    import shutil

    copied = []
    for name in TOKENIZER_FILES:
        if (base / name).is_file():
            shutil.copy2(base / name, dest / name)
            copied.append(name)
    return copied
