"""The base as it was, whole: its config, every stored tensor and its tokenizer files.

A trainable-only checkpoint needs its base to rebuild the model, so it records what that base
was (:func:`base_record`), and resume and ``export`` refuse a base that differs
(:func:`check_base_record`), naming what changed:

* **config**: every field of the parsed ``config.json`` (``rope_theta``, ``hidden_act``,
  ``rms_norm_eps``, ``max_position_embeddings``, ...) except :data:`HARMLESS_CONFIG_FIELDS`,
  which do not change the function (the dtype is checked through the tensors);
* **tensors**: the name, dtype, shape and SHA-256 of the bytes of every tensor in the weight
  files, so a tensor added, removed (which transformers would silently re-initialise), retyped
  (fp64) or changed in any byte is named;
* **tokenizer**: the SHA-256 of every tokenizer file (:func:`blockexp.io.portable.is_tokenizer_file`)
  of the tokenizer directory, so two swapped token ids are caught before an export carries them.

This is an integrity check, not a signature: whoever can edit a checkpoint can edit its record
too (docs/security.md). The frozen-weight fingerprint of :mod:`blockexp.io.digests` stays beside it:
it checks the weights as training loaded them, this checks the files they came from.
"""

from __future__ import annotations

import hashlib
import json
import mmap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

__all__ = [
    "HARMLESS_CONFIG_FIELDS",
    "base_record",
    "check_base_record",
    "config_record",
    "snapshot_dir",
    "tensor_record",
    "tokenizer_record",
]

# Fields that say how a config was saved or how outputs are returned, not what the model
# computes: ``dtype`` / ``torch_dtype`` are checked through every tensor's dtype instead.
HARMLESS_CONFIG_FIELDS = frozenset(
    {
        "transformers_version",
        "use_cache",
        "torch_dtype",
        "dtype",
        "_name_or_path",
        "_commit_hash",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
    }
)
_CHUNK = 64 * 2**20


def snapshot_dir(spec: Any) -> Path | None:
    """The local directory of a model or tokenizer spec: the directory itself, or a hub id's
    snapshot in the local cache (``None``: an inline config, ``byte``, or a hub id that is not
    cached)."""
    from blockexp.io.portable import local_dir

    found = local_dir(spec)
    if found is not None or not isinstance(spec, str) or spec == "byte":
        return found
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        return None
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, local_files_only=True))
    except (OSError, ValueError):  # not cached, or not a valid id
        return None


def config_record(spec: Any, trust_remote_code: bool = False) -> dict[str, Any]:
    """The model-defining fields of the parsed config (JSON-normalised, sorted)."""
    from blockexp.io.load import load_config

    data = load_config(spec, trust_remote_code=trust_remote_code).to_dict()
    kept = {k: v for k, v in data.items() if k not in HARMLESS_CONFIG_FIELDS}
    return json.loads(json.dumps(kept, sort_keys=True, default=str))


def _hash_range(path: Path, start: int, nbytes: int, prefix: str) -> str:
    digest = hashlib.sha256(prefix.encode())
    if nbytes:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                for offset in range(start, start + nbytes, _CHUNK):
                    digest.update(view[offset : min(offset + _CHUNK, start + nbytes)])
            finally:
                view.release()
    return digest.hexdigest()[:32]


def tensor_record(directory: Path) -> dict[str, str] | None:
    """``name -> "DTYPE|shape|sha256"`` of every tensor in the weight files of ``directory``
    (safetensors read as stored, byte ranges hashed on two threads; ``pytorch_model*.bin`` read
    with ``weights_only``), or ``None`` when it holds no weights."""
    from blockexp.io.safetensors import StreamingError, source_index

    try:
        entries = source_index(directory)
    except StreamingError:
        entries = None
    if entries is not None:
        for entry in entries.values():  # a truncated file would hash short ranges silently
            size = entry.file.stat().st_size
            if entry.start + entry.nbytes > size:
                raise StreamingError(
                    f"{entry.file} is truncated ({size:,} bytes, the header needs "
                    f"{entry.start + entry.nbytes:,}): re-download or re-save the base."
                )

        def one(name: str) -> str:
            e = entries[name]
            head = f"{e.dtype}|{'x'.join(map(str, e.shape))}|"
            return head + _hash_range(e.file, e.start, e.nbytes, head)

        names = sorted(entries)
        with ThreadPoolExecutor(max_workers=2) as pool:
            return dict(zip(names, pool.map(one, names), strict=True))
    bins = sorted(directory.glob("pytorch_model*.bin"))
    if not bins:
        return None
    import torch

    from blockexp.io.digests import tensor_digests

    out: dict[str, str] = {}
    for path in bins:
        tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        digests = tensor_digests(tensors)
        for name, tensor in tensors.items():
            shape = "x".join(map(str, tensor.shape))
            out[name] = f"{str(tensor.dtype).removeprefix('torch.')}|{shape}|{digests[name]}"
    return out


def tokenizer_record(spec: Any) -> dict[str, str] | None:
    """SHA-256 of every tokenizer file of the tokenizer directory ``spec`` (``byte``: the
    built-in tokenizer, no files; ``None``: nothing local to check)."""
    if spec == "byte":
        return {}
    from blockexp.io.portable import is_tokenizer_file

    directory = snapshot_dir(spec)
    if directory is None:
        return None
    out = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and is_tokenizer_file(path.name):
            out[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()[:32]
    return out


def base_record(
    base: Any, tokenizer: Any, tensors: bool = True, trust_remote_code: bool = False
) -> dict[str, Any]:
    """What a checkpoint records of its base: ``config``, ``tensors`` (``None`` for an inline
    config or an uncached hub id; skipped when ``tensors`` is false), ``base_tokenizer`` (the
    tokenizer files in the base directory, part of the base whether or not training used them)
    and ``tokenizer`` (those of the tokenizer training used)."""
    directory = None if isinstance(base, dict) else snapshot_dir(base)
    return {
        "config": config_record(base, trust_remote_code),
        "tensors": tensor_record(directory) if tensors and directory is not None else None,
        "base_tokenizer": tokenizer_record(directory) if directory is not None else None,
        "tokenizer": tokenizer_record(tokenizer),
    }


def _first(items: list[str], more: int) -> str:
    return ", ".join(items[:3]) + (f" and {more - 3} more" if more > 3 else "")


def _changes(expected: dict[str, Any], got: dict[str, Any], removed, added, changed) -> list[str]:
    """One phrase per key that is missing from ``got``, new in it, or different, in key order."""
    out = []
    for key in sorted(set(expected) | set(got)):
        if key not in got:
            out.append(removed(key, expected[key]))
        elif key not in expected:
            out.append(added(key, got[key]))
        elif expected[key] != got[key]:
            out.append(changed(key, expected[key], got[key]))
    return out


def _tensor_change(name: str, was: str, now: str) -> str:
    was_parts, now_parts = was.split("|"), now.split("|")
    if was_parts[:2] == now_parts[:2]:
        return f"tensor {name} has other values"
    return f"tensor {name} is {now_parts[0]} [{now_parts[1]}], was {was_parts[0]} [{was_parts[1]}]"


# What each part of a record reports when a key is removed, added or changed.
_DESCRIBE = {
    "config": (
        lambda k, v: f"{k} removed (was {v!r})",
        lambda k, v: f"{k} added ({v!r})",
        lambda k, a, b: f"{k} {a!r} -> {b!r}",
    ),
    "tensors": (
        lambda k, v: f"tensor {k} is missing (transformers would re-initialise it)",
        lambda k, v: f"tensor {k} was added",
        _tensor_change,
    ),
    "files": (
        lambda k, v: f"{k} is missing",
        lambda k, v: f"{k} was added",
        lambda k, a, b: f"{k} differs",
    ),
}


def check_base_record(
    expected: dict[str, Any],
    current: dict[str, Any],
    base: str,
    tokenizer: str | None = None,
    where: str = "the checkpoint",
) -> None:
    """Raise :class:`~blockexp.io.digests.IntegrityError` naming the first differences between the
    base ``current`` and the record ``expected`` (a part missing on either side is not
    compared: an uncached hub id has no files to read, an explicit ``--tokenizer`` is the user's
    choice)."""
    from blockexp.io.digests import IntegrityError

    fix = "Use the base it was trained on (--base for export, --model.base for resume)."
    parts = (
        ("config", "config", "config"),
        ("tensors", "tensors", "weight files"),
        ("base_tokenizer", "files", "tokenizer files"),
        ("tokenizer", "files", f"tokenizer ({tokenizer or base})"),
    )
    for key, kind, what in parts:
        if expected.get(key) is None or current.get(key) is None:
            continue
        changes = _changes(expected[key], current[key], *_DESCRIBE[kind])
        if changes:
            raise IntegrityError(
                f"Base '{base}' differs from the one {where} was trained on, in its {what}: "
                f"{_first(changes, len(changes))}. {fix}"
            )
