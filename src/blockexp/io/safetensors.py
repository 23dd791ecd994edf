"""Safetensors files read and written chunk by chunk: headers, a checkpoint's tensor index, shards.

Headers are parsed as JSON (no tensor data is read); tensor data is read with plain reads (no
``mmap``) and copied with ``os.copy_file_range`` where the kernel offers it; torch is imported only
to convert data (averaging, casts). :mod:`blockexp.io.streaming` plans an expansion on top of this.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DTYPES",
    "INDEX_FILE",
    "SINGLE_FILE",
    "DType",
    "OutputTensor",
    "SafetensorsEntry",
    "StreamingError",
    "parse_size",
    "read_safetensors_header",
    "source_index",
    "target_dtype",
    "write_shards",
]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_CHUNK_BYTES = 4 * 2**20


class DType(NamedTuple):
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
DTYPES: dict[str, DType] = {
    "F64": DType("float64", 8, True),
    "F32": DType("float32", 4, True),
    "F16": DType("float16", 2, True),
    "BF16": DType("bfloat16", 2, True),
    "I64": DType("int64", 8, False),
    "I32": DType("int32", 4, False),
    "I16": DType("int16", 2, False),
    "I8": DType("int8", 1, False),
    "U8": DType("uint8", 1, False),
    "BOOL": DType("bool", 1, False),
}
_NAMES = {v: k for k, v in DTYPES.items()}
_BY_TORCH_NAME = {v.torch_name: v for v in DTYPES.values()}


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
        if info["dtype"] not in DTYPES:
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


@dataclass
class OutputTensor:
    """One output tensor: its name, dtype and how it is produced."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    sources: list[SafetensorsEntry]
    op: str  # copy | zero | mean
    offset: int = 0

    @property
    def nbytes(self) -> int:
        n = DTYPES[self.dtype].itemsize
        for d in self.shape:
            n *= d
        return n


@dataclass
class _Shard:
    tensors: list[OutputTensor] = field(default_factory=list)
    size: int = 0


def target_dtype(entry: SafetensorsEntry, dtype: torch.dtype | DType | None) -> str:
    if dtype is None or not DTYPES[entry.dtype].is_floating_point:
        return entry.dtype
    return _NAMES[_BY_TORCH_NAME[str(dtype).removeprefix("torch.")]]


def _shard(outputs: list[OutputTensor], max_shard_bytes: int) -> list[_Shard]:
    shards: list[_Shard] = [_Shard()]
    for out in outputs:
        if shards[-1].tensors and shards[-1].size + out.nbytes > max_shard_bytes:
            shards.append(_Shard())
        shards[-1].tensors.append(out)
        shards[-1].size += out.nbytes
    return shards


def _header(shard: _Shard) -> bytes:
    # Like safetensors itself: larger dtypes first (keeps every tensor aligned), then by name.
    shard.tensors.sort(key=lambda o: (-DTYPES[o.dtype].itemsize, o.name))
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


def _write_tensor(out: OutputTensor, dst, reader: _Reader, chunk_bytes: int) -> None:
    src_dtype = DTYPES[out.sources[0].dtype]
    dst_dtype = DTYPES[out.dtype]
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


def write_shards(
    outputs: list[OutputTensor],
    dest: Path,
    max_shard_bytes: int,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Write ``outputs`` into ``dest`` as ``model.safetensors``, or as shards of at most
    ``max_shard_bytes`` named ``model-0000i-of-0000n.safetensors`` with their index; at most
    ``chunk_bytes`` of one tensor in memory. ``progress(bytes_done, bytes_total)`` after each
    tensor."""
    shards = _shard(outputs, max_shard_bytes)
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
